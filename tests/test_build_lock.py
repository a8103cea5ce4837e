"""Concurrent first users of one engines folder: a file lock per build target (filelock)
makes one build and the others wait, then reuse it (issue 23, item 4)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from answer_trt.errors import UserInputError
from answer_trt.export.publish import build_lock, lock_path


def test_a_second_build_of_one_folder_waits_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("ANSWER_TRT_CACHE", str(tmp_path / "cache"))
    target = (tmp_path / "engines").resolve()
    said: list[str] = []
    with build_lock(target, said.append):
        assert lock_path(target).is_file() and not (tmp_path / "engines").exists()
        with pytest.raises(UserInputError, match="another build has held"):
            with build_lock(target, said.append, timeout_s=0.3):
                pass
    assert any("waiting for it" in line for line in said)
    with build_lock(target, said.append, timeout_s=0.3):  # released: taken at once
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]  # nothing beside the user's folder


def test_a_waiting_build_goes_on_when_the_first_ends(tmp_path, monkeypatch):
    monkeypatch.setenv("ANSWER_TRT_CACHE", str(tmp_path / "cache"))
    target = (tmp_path / "engines").resolve()
    order: list[str] = []
    first_holds = threading.Event()

    def first() -> None:
        with build_lock(target, order.append):
            first_holds.set()
            threading.Event().wait(0.5)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    first_holds.wait(10)
    with build_lock(target, order.append, timeout_s=30):
        order.append("second in")
    thread.join()
    assert order.index("first done") < order.index("second in")


def test_an_unwritable_lock_folder_is_one_line(tmp_path, monkeypatch):
    cache_file = tmp_path / "a-file"
    cache_file.write_text("x")
    monkeypatch.setenv("ANSWER_TRT_CACHE", str(cache_file))
    with pytest.raises(UserInputError, match="set ANSWER_TRT_CACHE to a writable folder"):
        with build_lock((tmp_path / "e").resolve(), print):
            pass


@pytest.mark.slow
def test_three_first_users_of_an_empty_cache_all_get_the_image(tmp_path):
    """The issue's reproduction: three `generate --model tiny` at once on an empty cache."""
    env = dict(os.environ, ANSWER_TRT_CACHE=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-m", "answer_trt.cli", "generate", "a red circle", "--model", "tiny",
                               "--steps", "4", "-o", str(tmp_path / f"o{i}.png")], env=env, stderr=subprocess.PIPE,
                              text=True) for i in range(3)]
    results = [(p.wait(timeout=600), p.stderr.read() if p.stderr else "") for p in procs]
    assert [rc for rc, _ in results] == [0, 0, 0], results
    images = [np.asarray(Image.open(tmp_path / f"o{i}.png")) for i in range(3)]
    assert all(np.array_equal(images[0], image) for image in images[1:])
    assert len(list((tmp_path / "cache" / "engines").iterdir())) == 1  # built once, reused


@pytest.mark.parametrize("broken", ["scheduler", "lora", "tokenizer"])
def test_a_build_refused_for_its_model_takes_no_lock_and_makes_no_folder(broken, tmp_path, monkeypatch):
    """Issue 32 item 1: the model, its configs and the LoRAs are checked before the build lock
    is taken and before --out's parents are made (the hostile probe found a lock file left in
    the cache by every refused build)."""
    import json
    import shutil

    from answer_trt.build_config import BuildConfig
    from answer_trt.export.build import build
    from answer_trt.models.lora import LoraSpec
    from answer_trt.models.source import resolve_model

    monkeypatch.setenv("ANSWER_TRT_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    shutil.copytree(resolve_model("tiny").path, model)
    loras: tuple[LoraSpec, ...] = ()
    if broken == "scheduler":
        path = model / "scheduler" / "scheduler_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "prediction_type": "x"}))
    elif broken == "tokenizer":
        path = model / "tokenizer" / "tokenizer_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "model_max_length": -1}))
    else:
        loras = (LoraSpec(tmp_path / "missing.safetensors", 1.0),)
    out = tmp_path / "new" / "engines"
    with pytest.raises(UserInputError) as refused:
        build(BuildConfig(model=str(model), out=out, loras=loras), log=lambda _m: None)
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "new").exists()
    assert not (tmp_path / "cache" / "locks").exists() or not list((tmp_path / "cache" / "locks").iterdir())
