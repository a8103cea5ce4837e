"""The cluster form of `answer-trt serve` (issue 24, item 6), run on one machine: a Ray cluster
of two nodes started with `ray start` (a head and a second node, each with one CPU, their own
ports, temp folder and auth token, on 127.0.0.1), and `answer-trt serve --address HEAD
--replicas 2` on it. Each node holds one replica (Ray Serve spreads replicas over nodes; one
CPU each leaves no other way), both answer, and their images equal the CLI's to 0 levels.
Only the processes this test started are stopped (SIGTERM to each `ray start --block`, which
takes its node's processes down; stragglers found by the cluster's temp folder are killed)."""

from __future__ import annotations

import io
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install -c constraints.txt -e '.[serve]'")

from answer_trt.bench.load import free_port  # noqa: E402
from answer_trt.serving.client import AnswerTrtClient  # noqa: E402
from tests.serve_process import ServeProcess, child_env, replica_stats, stop_process  # noqa: E402

HOST = "127.0.0.1"
WAIT_S = 240.0  # the most any one wait in here may take
REQUEST = {"prompt": "a red circle and a blue square", "method": "answer", "steps": 6, "seed": 3}


class RayNode:
    """``ray start --block ...`` as a child process: the node lives as long as it does."""

    def __init__(self, name: str, args: list[str], folder: Path, env: dict[str, str]) -> None:
        self.name, self.log = name, folder / f"{name}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--block", *args],
                                         env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_started(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while "Ray runtime started" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"ray start ({self.name}) did not start:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.5)

    def stop(self, timeout_s: float = 60.0) -> None:
        stop_process(self.proc, timeout_s)


def processes_naming(text: str) -> list[int]:
    """The pids of this machine's processes whose command line contains ``text``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from answer_trt.build_config import BuildConfig
    from answer_trt.export.build import build

    out = tmp_path_factory.mktemp("cluster-engines") / "tiny"
    build(BuildConfig(model="tiny", out=out, max_batch=4), log=lambda _m: None)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the cluster's processes in /proc")
def test_two_node_cluster_serves_one_replica_per_node_with_the_clis_images(engines, tmp_path):
    env = child_env(RAY_USAGE_STATS_ENABLED="0")
    cli_png = tmp_path / "cli.png"
    subprocess.run([sys.executable, "-m", "answer_trt.cli", "generate", REQUEST["prompt"], "--engines", str(engines),
                    "--method", REQUEST["method"], "--steps", str(REQUEST["steps"]), "--seed", str(REQUEST["seed"]),
                    "-o", str(cli_png)], env=env, check=True, timeout=WAIT_S, capture_output=True)
    expected = np.asarray(Image.open(cli_png).convert("RGB"), dtype=np.int16)

    # A short folder of our own: Ray's socket paths live under it (at most 107 characters).
    temp = Path(tempfile.mkdtemp(prefix="atrt-ray-", dir="/tmp"))
    head_port = free_port(HOST)
    # Our own token: nothing is read from or written to ~/.ray, and no other Ray can join.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    env.pop("RAY_ADDRESS", None)
    common = ["--node-ip-address", HOST, "--num-cpus", "1", "--num-gpus", "0", "--object-store-memory",
              str(100 * 2**20), "--disable-usage-stats"]
    nodes: list[RayNode] = []
    server: ServeProcess | None = None
    try:
        nodes.append(RayNode("head", ["--head", "--port", str(head_port), "--temp-dir", str(temp / "head"),
                                      "--include-dashboard", "false", "--resources", '{"node_a": 1}',
                                      "--ray-client-server-port", str(free_port(HOST)),
                                      "--dashboard-agent-listen-port", str(free_port(HOST)), *common],
                             tmp_path, env))
        nodes[0].wait_started(WAIT_S)
        nodes.append(RayNode("second", ["--address", f"{HOST}:{head_port}", "--resources", '{"node_b": 1}',
                                        "--dashboard-agent-listen-port", str(free_port(HOST)), *common],
                             tmp_path, env))
        nodes[1].wait_started(WAIT_S)

        server = ServeProcess(["--engines", str(engines), "--address", f"{HOST}:{head_port}", "--replicas", "2",
                               "--port", str(free_port(HOST))], tmp_path, env)
        client = AnswerTrtClient(server.wait_ready(WAIT_S), timeout_s=60)
        pngs: list[bytes] = []
        with ThreadPoolExecutor(4) as pool:
            def send() -> None:  # a burst of one request: Ray Serve's proxy spreads it over the replicas
                pngs.extend(pool.map(lambda _: client.generate(**REQUEST), range(4)))

            seen = replica_stats(client, 2, lambda s: s["completed"] >= 1, timeout_s=WAIT_S, send=send)
    finally:
        code = server.stop() if server is not None else None
        for node in reversed(nodes):
            node.stop()
        for pid in processes_naming(str(temp)):  # what outlived its node
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)
    assert len(seen) == 2 and all(s["completed"] >= 1 for s in seen.values()), seen
    assert len({s["node_id"] for s in seen.values()}) == 2, seen  # one replica on each node
    # Every request was REQUEST: each replica made at least one of these images.
    assert pngs and all(np.abs(np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
                               - expected).max() == 0 for png in pngs)
    assert code == 0, server.log()[-4000:]
