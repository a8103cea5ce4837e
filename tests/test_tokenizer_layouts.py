"""Every CLIP tokenizer layout transformers writes builds, loads and draws diffusers' image.

transformers 4.57's CLIPTokenizer saves the slow files (vocab.json, merges.txt, plus
tokenizer_config.json and special_tokens_map.json); its CLIPTokenizerFast saves those and
tokenizer.json; transformers 5 saves tokenizer.json and tokenizer_config.json alone. For
each layout, for SD (``tiny``) and SDXL (``tiny-sdxl``, two tokenizers): the folder builds,
every file that loading the engines folder opens (recorded with inotify, so the files that
native code opens count too) is checksummed in the manifest, and CFG equals diffusers'
pipeline loaded from the same folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import answer_trt
from answer_trt.build_config import BuildConfig
from answer_trt.errors import UserInputError
from answer_trt.export.build import build
from answer_trt.manifest import (
    FAST_TOKENIZER_FILE,
    MANIFEST_NAME,
    TOKENIZER_FOLDERS,
    read_manifest,
    tokenizer_files,
)
from answer_trt.models.source import load_tokenizers, resolve_model
from answer_trt.models.tokenizer_files import BOS, EOS
from tests.file_opens import recorded_opens

FAMILIES = ("tiny", "tiny-sdxl")
# The files each layout's tokenizer folder holds (what the writers above save).
LAYOUTS = {
    "slow": {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"},
    "fast": {"tokenizer.json", "tokenizer_config.json"},
    "both": {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"},
}
READERS = {"slow": "slow", "fast": "fast", "both": "slow"}
PROMPT = "a red circle and a blue square"


def write_layout(model: Path, layout: str, out: Path) -> Path:
    """Copy ``model`` to ``out`` with each tokenizer folder saved as ``layout``: transformers'
    own ``save_pretrained`` (tokenizer.json + tokenizer_config.json), plus the slow files
    and special_tokens_map.json for the layouts that have them."""
    from transformers import CLIPTokenizer

    shutil.copytree(model, out)
    for sub in TOKENIZER_FOLDERS:
        source, folder = model / sub, out / sub
        if not source.is_dir():
            continue
        tokenizer = CLIPTokenizer.from_pretrained(source)
        shutil.rmtree(folder)
        tokenizer.save_pretrained(folder)
        if layout in ("slow", "both"):
            for name in ("vocab.json", "merges.txt"):
                shutil.copy(source / name, folder / name)
            special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": str(tokenizer.pad_token)}
            (folder / "special_tokens_map.json").write_text(json.dumps(special))
        if layout == "slow":
            (folder / "tokenizer.json").unlink()
        assert {p.name for p in folder.iterdir()} == LAYOUTS[layout], (sub, layout)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(family, layout) -> (model folder, engines folder), each built once, on first use."""
    cache: dict[tuple[str, str], tuple[Path, Path]] = {}

    def get(family: str, layout: str) -> tuple[Path, Path]:
        if (family, layout) not in cache:
            root = tmp_path_factory.mktemp(f"{family}-{layout}")
            model = write_layout(resolve_model(family).path, layout, root / "model")
            engines = root / "engines"
            build(BuildConfig(model=str(model), out=engines, max_batch=1), log=lambda _m: None)
            cache[family, layout] = (model, engines)
        return cache[family, layout]

    return get


def checked_load(engines: Path) -> tuple[answer_trt.Pipeline, set[str]]:
    """Load ``engines``, recording every file opened under it; each must be checksummed."""
    with recorded_opens(engines) as opened:
        pipe = answer_trt.load(engines)
        pipe.text.encode(PROMPT)  # a tokenizer opened lazily would show here
    manifest = read_manifest(engines)
    unchecked = sorted(opened - set(manifest.files) - {MANIFEST_NAME})
    assert not unchecked, f"opened without a checksum: {unchecked}"
    return pipe, opened


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_layout_loads_only_checksummed_files(built, family, layout, tmp_path):
    model, engines = built(family, layout)
    subs = [sub for sub in TOKENIZER_FOLDERS if (model / sub).is_dir()]
    assert len(subs) == (2 if family == "tiny-sdxl" else 1)
    # The model folder: each tokenizer opens no file outside what tokenizer_files lists.
    layouts = [tokenizer_files(model, sub) for sub in subs]
    assert [t.reader for t in layouts] == [READERS[layout]] * len(subs)
    with recorded_opens(model) as opened:
        load_tokenizers(model)
    listed = {rel for t in layouts for rel in t.files}
    assert opened and opened <= listed, (opened, listed)
    # The engines folder: the build's own tokenizer file, checksummed, and nothing unchecked opened.
    pipe, opened = checked_load(engines)
    for sub in subs:
        assert f"{sub}/{FAST_TOKENIZER_FILE}" in opened  # the recorder sees the tokenizer load
    assert len(pipe.text.tokenizers) == len(subs)
    # The same folder as built before the build wrote that file: transformers reads the layout.
    old = tmp_path / "old"
    shutil.copytree(engines, old)
    manifest = json.loads((old / MANIFEST_NAME).read_text())
    for sub in subs:
        (old / sub / FAST_TOKENIZER_FILE).unlink()
        del manifest["files"][f"{sub}/{FAST_TOKENIZER_FILE}"]
    (old / MANIFEST_NAME).write_text(json.dumps(manifest))
    old_pipe, opened = checked_load(old)
    assert {rel.split("/")[0] for rel in opened} >= set(subs)
    for a, b in zip(old_pipe.text.encode(PROMPT), pipe.text.encode(PROMPT)):
        assert torch.equal(a.hidden, b.hidden)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_layout_reproduces_diffusers(built, family, layout):
    from diffusers import DiffusionPipeline

    model, engines = built(family, layout)
    reference = DiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32)
    reference.set_progress_bar_config(disable=True)
    expected = reference(PROMPT, num_inference_steps=4, guidance_scale=5.0, output_type="np",
                         generator=torch.Generator().manual_seed(3)).images
    expected = (expected * 255).round().astype(np.int16)
    got = np.stack([np.asarray(im, dtype=np.int16) for im in answer_trt.load(engines).generate(
        PROMPT, method="cfg", steps=4, guidance_scale=5.0, seed=3).images])
    assert expected.std() > 5  # a non-trivial picture
    assert np.abs(got - expected).max() <= 2


def test_unlisted_tokenizer_file_is_refused(built, tmp_path):
    """A file the tokenizer would open without a checksum: the folder is refused, in one line."""
    _model, engines = built("tiny", "fast")
    old = tmp_path / "old"
    shutil.copytree(engines, old)
    (old / "tokenizer" / FAST_TOKENIZER_FILE).unlink()  # transformers reads the folder now
    manifest = json.loads((old / MANIFEST_NAME).read_text())
    del manifest["files"][f"tokenizer/{FAST_TOKENIZER_FILE}"]
    (old / MANIFEST_NAME).write_text(json.dumps(manifest))
    (old / "tokenizer" / "added_tokens.json").write_text("{}")
    with pytest.raises(UserInputError, match=r"lacks 'tokenizer/added_tokens.json'") as info:
        answer_trt.load(old)
    assert "\n" not in str(info.value)


def test_folder_without_tokenizer_files_is_refused(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(resolve_model("tiny").path, model)
    for name in ("vocab.json", "tokenizer.json"):
        (model / "tokenizer" / name).unlink()
    assert tokenizer_files(model, "tokenizer").reader == ""
    with pytest.raises(UserInputError, match=r"tokenizer holds no tokenizer files \(tokenizer.json, or vocab.json"):
        load_tokenizers(model)
