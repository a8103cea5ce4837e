"""Serving replicas share one engines cache (issue 24, item 5): `answer-trt serve --model tiny
--replicas 3` on an empty cache builds the engines once, through the build lock of the cache
folder (the one `generate --model tiny` takes), and every replica answers. The command line
runs as its own process (its own Ray, on 127.0.0.1 and a free port), stopped with SIGTERM."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install -c constraints.txt -e '.[serve]'")

from answer_trt.bench.load import free_port  # noqa: E402
from answer_trt.serving.client import AnswerTrtClient  # noqa: E402
from tests.serve_process import ServeProcess, child_env, replica_stats  # noqa: E402

HOST = "127.0.0.1"
REPLICAS = 3
WAIT_S = 300.0  # the most any one wait in here may take (a build and Ray's start on 2 busy cores)
WAITING = "another answer-trt build of this folder is running; waiting for it"


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(0.5)


@pytest.mark.slow
def test_replicas_on_an_empty_cache_build_once_under_the_lock_and_all_answer(tmp_path, monkeypatch):
    from answer_trt.export.publish import build_lock
    from answer_trt.loaders import cached_engines_folder
    from answer_trt.rules import DEFAULT_MAX_BATCH

    cache = tmp_path / "cache"
    monkeypatch.setenv("ANSWER_TRT_CACHE", str(cache))
    env = child_env(ANSWER_TRT_CACHE=str(cache))
    folder = cached_engines_folder("tiny", None, None, DEFAULT_MAX_BATCH).resolve()
    generate_cmd = [sys.executable, "-m", "answer_trt.cli", "generate", "a red circle", "--model", "tiny",
                    "--steps", "4", "--seed", "3", "-o", str(tmp_path / "cli.png")]
    release = threading.Event()
    held = threading.Event()

    def hold() -> None:  # a first user of the cache that is still building
        with build_lock(folder, lambda _m: None):
            held.set()
            release.wait(WAIT_S)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(30)
    server = ServeProcess(["--model", "tiny", "--replicas", str(REPLICAS), "--port", str(free_port(HOST))],
                          tmp_path, env)
    with open(tmp_path / "generate.err", "w") as err:
        generate = subprocess.Popen(generate_cmd, env=env, stderr=err, stdout=subprocess.DEVNULL)
    try:
        # Both wait on the lock while it is held; then one of them builds.
        wait_for(lambda: WAITING in server.log() and WAITING in (tmp_path / "generate.err").read_text(), WAIT_S,
                 "serve and generate both wait for the build lock")
        assert not folder.exists()
        release.set()
        holder.join(30)
        url = server.wait_ready(WAIT_S)
        assert generate.wait(WAIT_S) == 0, (tmp_path / "generate.err").read_text()

        client = AnswerTrtClient(url, timeout_s=60)
        served = np.asarray(Image.open(io.BytesIO(client.generate("a red circle", steps=4, seed=3))).convert("RGB"))
        assert np.array_equal(served, np.asarray(Image.open(tmp_path / "cli.png").convert("RGB")))

        with ThreadPoolExecutor(2 * REPLICAS) as pool:
            def send() -> None:  # a burst: Ray Serve's proxy spreads it over the replicas
                list(pool.map(lambda i: client.generate("a blue square", method="cfg", steps=2, seed=i),
                              range(2 * REPLICAS)))

            seen = replica_stats(client, REPLICAS, lambda s: s["completed"] >= 1, timeout_s=WAIT_S, send=send)
    finally:
        release.set()
        holder.join(30)
        if generate.poll() is None:
            generate.kill()
            generate.wait(10)
        code = server.stop()
    assert len(seen) == REPLICAS, seen
    assert all(s["completed"] >= 1 for s in seen.values()), seen
    assert len({s["pid"] for s in seen.values()}) == REPLICAS  # three processes, one cache folder
    log = server.log() + (tmp_path / "generate.err").read_text()
    assert log.count(": built text_encoder, unet, vae_decoder") == 1, log  # one build ...
    assert log.count("nothing to build") == 1, log  # ... the other reused it
    assert [p.name for p in (cache / "engines").iterdir()] == [folder.name]
    assert code == 0, server.log()[-4000:]
