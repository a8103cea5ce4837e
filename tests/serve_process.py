"""`answer-trt serve` as a separate process, for the tests that run the command line itself
(tests/test_serve_replicas.py, tests/test_serve_cluster.py): started with its own
environment, waited for (bounded), and stopped with SIGTERM as `docker stop` would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from answer_trt.serving.client import AnswerTrtClient, ServerError

READY = "answer-trt: serving "


class ServeProcess:
    """``python -m answer_trt.cli serve ARGS``; stdout and stderr go to files in ``folder``."""

    def __init__(self, args: Sequence[str], folder: Path, env: dict[str, str]) -> None:
        self.out, self.err = folder / "serve.out", folder / "serve.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "answer_trt.cli", "serve", *args], env=env,
                                         stdout=out, stderr=err, start_new_session=True)

    def log(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def wait_ready(self, timeout_s: float) -> str:
        """The URL it serves at, once it says so; fails with its log if it ends or takes too long."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.out.read_text().splitlines():
                if line.startswith(READY):
                    return line[len(READY):].split()[0]
            if self.proc.poll() is not None:
                raise AssertionError(f"serve ended with code {self.proc.returncode}:\n{self.log()[-4000:]}")
            time.sleep(0.5)
        raise AssertionError(f"serve was not ready within {timeout_s:.0f} s:\n{self.log()[-4000:]}")

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (serve shuts Serve and its own Ray down), then SIGKILL of its process group."""
        return stop_process(self.proc, timeout_s)


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 60.0) -> int | None:
    """SIGTERM ``proc`` (started with ``start_new_session=True``); SIGKILL its process group
    if it has not ended within ``timeout_s``. Returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


@contextlib.contextmanager
def local_server(engines: Path, host: str = "127.0.0.1") -> Iterator[str]:
    """``answer-trt serve`` of ``engines`` in this process (Ray Serve, one small replica) on a
    free port of ``host``: yields its URL, and stops Serve after."""
    from answer_trt.bench.load import free_port
    from answer_trt.serving import app

    config = app.ServeConfig(engines, host=host, port=free_port(host), verify=False, replica_cpus=0.5)
    try:
        yield app.start(config)
    finally:
        app.stop()


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment with this checkout first on PYTHONPATH (so the child, and
    the Ray workers it starts, import the answer_trt under test), plus ``extra``."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, path) if p), "HF_HUB_OFFLINE": "1",
            **extra}


def replica_stats(client: AnswerTrtClient, wanted: int, ok: Callable[[dict[str, Any]], bool],
                  timeout_s: float, send: Callable[[], None] | None = None) -> dict[str, dict[str, Any]]:
    """Each replica's latest ``/v1/stats`` (keyed by its replica id), polled until ``wanted``
    replicas answer with stats that pass ``ok``; ``send`` is called between polls (to give
    the replicas work). Each poll reaches one replica, as Ray Serve's proxy picks it."""
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            stats = client.stats()
        except ServerError:
            time.sleep(0.2)
            continue
        seen[stats["replica"]] = stats
        if sum(ok(s) for s in seen.values()) >= wanted:
            break
        if send is not None:
            send()
    return seen
