"""`generate --engines` starts fast: it imports neither diffusers nor transformers (the
tokenizers come from the `tokenizers` files the build writes, DDIM/Euler schedules are
computed natively), tokenizes exactly as transformers' CLIPTokenizer does, and makes
the same pixels as the transformers + diffusers path."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import CLIPTokenizer

from answer_trt.manifest import FAST_TOKENIZER_FILE, MANIFEST_NAME
from answer_trt.models.fast_tokenizer import FastClipTokenizer, write_fast_tokenizer
from answer_trt.models.source import DEFAULT_MODEL, load_engine_tokenizers, resolve_model
from answer_trt.models.tokenizer_files import write_clip_tokenizer
from answer_trt.synthetic.dataset import VOCABULARY
from tests.test_shipped_tiny import README_JOB_PIXELS_SHA256

REPO = Path(__file__).resolve().parents[1]
README_JOB = "a red circle and a blue square"


def prompts() -> list[str]:
    rng = random.Random(0)
    alphabet = ("abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789,.!?'\"-_()[]{}<>|\\/@#$%^&*+=~`\t\n "
                "éüßøçñ漢字かな🙂👍🏽\u200b\u00a0")
    fixed = [
        "", " ", "  \t\n ", "a", "a red circle", README_JOB, "A RED Circle  and   a blue SQUARE",
        "a yellow triangle and a green square", " leading and trailing spaces ", "red,green;blue:yellow!",
        "don't we'll they're it's I'm you've he'd", "<|startoftext|>a red circle<|endoftext|>", "<|endoftext|>",
        "Crème brûlée, naïve café, Ångström", "東京の猫 and a 🐱 emoji 🙂👍🏽", "zero\u200bwidth\u00a0nbsp",
        "1234567890 3.14159 1,000,000", "a " * 100, "red " * 40, "x" * 300, "a-b_c/d\\e|f",
        " ".join(VOCABULARY), "tab\tseparated\twords\nand\nlines",
    ]
    randoms = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120))) for _ in range(200)]
    words = [" ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(1, 30))) for _ in range(100)]
    return fixed + randoms + words


def tokenizer_pairs(tmp_path: Path) -> list[tuple[str, CLIPTokenizer, FastClipTokenizer, int]]:
    """(label, transformers tokenizer, ours, max_length): the shipped `tiny` vocabulary,
    a generated one with the CLIP length of 77, and SDXL's second one (pads with "!")."""
    folders = [("tiny", resolve_model(DEFAULT_MODEL).path / "tokenizer")]
    write_clip_tokenizer(tmp_path / "clip77", ["a", "red", "circle", "photo", "cat", "and"])
    write_clip_tokenizer(tmp_path / "pad-bang", ["a", "red", "circle"], pad_token="!")
    folders += [("clip77", tmp_path / "clip77"), ("pad-bang", tmp_path / "pad-bang")]
    pairs = []
    for label, folder in folders:
        reference = CLIPTokenizer.from_pretrained(folder)
        out = tmp_path / f"fast-{label}"
        out.mkdir()
        ours = FastClipTokenizer.from_file(write_fast_tokenizer(reference, folder, out))
        pairs.append((label, CLIPTokenizer.from_pretrained(folder), ours, int(reference.model_max_length)))
    return pairs


def test_fast_tokenizer_equals_transformers_clip_tokenizer(tmp_path):
    texts = prompts()
    for label, reference, ours, length in tokenizer_pairs(tmp_path):
        for max_length in (length, 77):
            want = reference(texts, padding="max_length", max_length=max_length, truncation=True,
                             return_tensors="np").input_ids
            got = ours(texts, padding="max_length", max_length=max_length, truncation=True,
                       return_tensors="np").input_ids
            assert got.dtype == np.int64 and got.shape == (len(texts), max_length)
            for text, w, g in zip(texts, want, got):
                assert list(g) == list(w), (label, max_length, text)
        for text in texts:  # the untruncated count behind the truncation warning
            assert ours(text).input_ids == reference(text).input_ids, (label, text)
            assert (ours(text, add_special_tokens=False).input_ids
                    == reference(text, add_special_tokens=False).input_ids), (label, text)


def test_engines_folder_holds_the_fast_tokenizer_and_an_old_folder_still_loads(engines_dir, tmp_path):
    manifest = json.loads((engines_dir / MANIFEST_NAME).read_text())
    assert f"tokenizer/{FAST_TOKENIZER_FILE}" in manifest["files"]
    (tokenizer,) = load_engine_tokenizers(engines_dir, manifest["files"])
    assert isinstance(tokenizer, FastClipTokenizer)
    # A folder built before the file existed: the tokenizer comes through transformers.
    old = tmp_path / "old"
    shutil.copytree(engines_dir, old)
    (old / "tokenizer" / FAST_TOKENIZER_FILE).unlink()
    del manifest["files"][f"tokenizer/{FAST_TOKENIZER_FILE}"]
    (old / MANIFEST_NAME).write_text(json.dumps(manifest))
    import answer_trt

    pipe = answer_trt.load(old)
    assert isinstance(pipe.text.tokenizers[0], CLIPTokenizer)
    new = answer_trt.load(engines_dir)
    for prompt in ("a red circle", "", "zebra " * 30):
        for a, b in zip(pipe.text.encode(prompt), new.text.encode(prompt)):
            assert np.array_equal(a.hidden.numpy(), b.hidden.numpy())


def test_fast_and_library_paths_make_the_same_images(ort_pipe, monkeypatch):
    """The native schedules and the fast tokenizer against diffusers' schedulers and
    transformers' tokenizer, on the same engines: the same bytes, for DDIM and Euler."""
    from answer_trt import pipeline
    from answer_trt.schedulers import make_diffusers_scheduler

    kwargs = dict(steps=6, seed=3, batch=1)
    fast = {(m, s): ort_pipe.generate("a red circle", method=m, scheduler=s, **kwargs).images[0]
            for m in ("cfg", "answer") for s in (None, "euler")}
    monkeypatch.setattr(pipeline, "make_scheduler", make_diffusers_scheduler)
    for (method, scheduler), image in fast.items():
        slow = ort_pipe.generate("a red circle", method=method, scheduler=scheduler, **kwargs).images[0]
        assert np.array_equal(np.asarray(image), np.asarray(slow)), (method, scheduler)


@pytest.fixture(scope="module")
def tiny_engines(tmp_path_factory) -> Path:
    from answer_trt.build_config import BuildConfig
    from answer_trt.export.build import build

    out = tmp_path_factory.mktemp("tiny-engines") / "tiny"
    build(BuildConfig(model="tiny", out=out), log=lambda _m: None)
    return out


def test_generate_engines_imports_neither_diffusers_nor_transformers(tiny_engines, tmp_path):
    out = tmp_path / "job.png"
    code = (
        "import json, sys\n"
        "from answer_trt.cli import main\n"
        f"rc = main(['generate', {README_JOB!r}, '--engines', {str(tiny_engines)!r}, '-o', {str(out)!r}])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'transformers'))\n"
        "print(json.dumps({'rc': rc, 'heavy': heavy}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"rc": 0, "heavy": []}, proc.stderr
    from PIL import Image

    pixels = np.asarray(Image.open(out))
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == README_JOB_PIXELS_SHA256


def test_importing_answer_trt_stays_light():
    code = ("import sys, answer_trt; answer_trt.__version__; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'diffusers', 'transformers', 'onnxruntime', 'PIL', 'numpy')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
