"""Errors the machine causes are one line and a clean exit (issue 23, item 6): Ctrl-C,
a full disk, a cache that is a file, no home directory, an unreachable or malformed
server address. Nothing half-written stays."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from answer_trt.cli import main


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def wait_for_exit(proc: subprocess.Popen[str], seconds: float) -> str:
    """The child's stderr once it exits; one that is still running after ``seconds`` is killed
    (so it does not load the rest of the suite) and the test fails with what it wrote."""
    try:
        return proc.communicate(timeout=seconds)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"still running {seconds:g} s after Ctrl-C; stderr: {proc.communicate()[1]!r}")


def test_ctrl_c_during_generate_is_one_line_exit_130_and_writes_nothing(tmp_path):
    env = dict(os.environ, ANSWER_TRT_CACHE=str(tmp_path / "cache"))
    out = tmp_path / "x.png"
    proc = subprocess.Popen([sys.executable, "-m", "answer_trt.cli", "generate", "a red circle", "--model", "tiny",
                             "--backend", "torch", "--scheduler", "euler", "--steps", "900", "--batch", "16", "-o",
                             str(out)], env=env,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(8)  # loaded and denoising by now on a slow machine
    proc.send_signal(signal.SIGINT)
    err = wait_for_exit(proc, 60)
    assert proc.returncode == 130, err
    assert "interrupted" in one_line(err)
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == []  # no PNG, no temporary file


def test_a_ctrl_c_whose_keyboard_interrupt_was_lost_still_stops_generate_at_the_next_step(tmp_path, capsys):
    """Python can swallow a KeyboardInterrupt (raised inside a __del__, it is only printed):
    the flag the Ctrl-C handler sets stops the run at the next step, with exit 130."""
    import answer_trt.cli as cli

    cli._CTRL_C.set()
    try:
        code = main(["generate", "a red circle", "--model", "tiny", "--backend", "torch", "--steps", "3", "-o",
                     str(tmp_path / "x.png")])
    finally:
        cli._CTRL_C.clear()
    assert code == 130 and "interrupted" in one_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyboardInterrupt):
        cli._on_ctrl_c(signal.SIGINT, None)
    assert cli._CTRL_C.is_set()
    cli._CTRL_C.clear()


@pytest.mark.parametrize("turned_into", ["import", "user error"])
def test_a_ctrl_c_a_library_turned_into_its_own_error_is_still_exit_130(tmp_path, monkeypatch, capsys, turned_into):
    """pybind11 modules report a Ctrl-C during their import as ImportError("initialization
    failed") (seen with onnxruntime); our loaders then say the package is "not installed".
    Either way the handler's flag is set, and the exit is Ctrl-C's: 130, one line."""
    import answer_trt.cli as cli
    from answer_trt.errors import UserInputError

    def importing(_args: object) -> int:
        try:
            cli._on_ctrl_c(signal.SIGINT, None)  # the Ctrl-C arrives inside the module's init
        except KeyboardInterrupt:
            if turned_into == "import":
                raise ImportError("initialization failed") from None
            raise UserInputError("onnxruntime is not installed here: pip install onnxruntime") from None
        return 0

    monkeypatch.setattr(cli, "_generate", importing)
    try:
        code = main(["generate", "a red circle", "--model", "tiny", "-o", str(tmp_path / "x.png")])
    finally:
        cli._CTRL_C.clear()
    assert code == 130 and "interrupted" in one_line(capsys.readouterr().err)
    monkeypatch.setattr(cli, "_generate", lambda _args: (_ for _ in ()).throw(ImportError("no module")))
    with pytest.raises(ImportError):  # without a Ctrl-C an error stays what it is
        main(["generate", "a red circle", "--model", "tiny", "-o", str(tmp_path / "x.png")])


def test_a_full_disk_while_writing_the_png_is_one_line(tmp_path, monkeypatch, capsys):
    import answer_trt.images

    def full(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.png"))

    monkeypatch.setattr(answer_trt.images, "save_pngs", full)
    assert main(["generate", "a", "--model", "tiny", "--backend", "torch", "--steps", "1", "-o",
                 str(tmp_path / "x.png")]) == 1
    line = one_line(capsys.readouterr().err)
    assert "No space left on device" in line and "free some space" in line


def test_a_cache_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("ANSWER_TRT_CACHE", str(tmp_path / "f"))
    code = main(["generate", "a", "--model", "tiny", "-o", str(tmp_path / "x.png")])
    line = one_line(capsys.readouterr().err)
    assert code in (1, 2) and "ANSWER_TRT_CACHE" in line


def test_no_home_directory_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ANSWER_TRT_CACHE", raising=False)

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert main(["generate", "a", "--model", "tiny", "-o", str(tmp_path / "x.png")]) == 2
    assert "set ANSWER_TRT_CACHE" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("url, needle", [("http://127.0.0.1:1", "cannot reach"), ("not-a-url", "not a server")])
def test_load_against_a_bad_server_address_is_one_line(url, needle, capsys):
    assert main(["load", "--serve", url, "--requests", "1", "--concurrency", "1", "--timeout", "5"]) == 2
    assert needle in one_line(capsys.readouterr().err)


def test_a_killed_write_leaves_nothing_after_the_next_run(tmp_path):
    """Issue 23 item 8: `.out.png.*.tmp` of a killed write is removed by the next write of
    that file, once it is old enough not to be a write in progress. Issue 32: only a
    temporary answer-trt's journal records as its own; a user's file of that name stays."""
    from answer_trt.files import STALE_TEMPORARY_S, _journal, write_text_atomic

    stale, fresh, other = tmp_path / ".out.png.abc123.tmp", tmp_path / ".out.png.def456.tmp", tmp_path / ".x.tmp"
    users = tmp_path / ".out.png.mine.tmp"  # the user's own file, with a name that fits the pattern
    for path in (stale, fresh, other, users):
        path.write_text("half")
    for path in (stale, fresh):  # what a killed atomic write leaves: the file and its record
        _journal(path, path.stat())
    old = time.time() - STALE_TEMPORARY_S - 10
    for path in (stale, users):
        os.utime(path, (old, old))
    write_text_atomic(tmp_path / "out.png", "whole")
    assert (tmp_path / "out.png").read_text() == "whole"
    assert not stale.exists() and fresh.exists() and other.exists()
    assert users.read_text() == "half"  # old and well named, but never ours


@pytest.mark.parametrize("closed", ["1", "2"], ids=["stdout", "stderr"])
def test_a_closed_stdout_or_stderr_loses_messages_not_the_image(closed, tmp_path):
    """`generate ... 2>&-` (or `>&-`): the PNG is written and the exit code is 0."""
    out = tmp_path / "x.png"
    command = (f"{sys.executable} -m answer_trt.cli generate 'a red circle' --model tiny --backend torch "
               f"--steps 2 -o {out} {closed}>&-")
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()


def test_a_path_over_the_file_system_limits_is_one_short_line(tmp_path, capsys):
    deep = tmp_path / ("d/" * 3000) / "x.png"
    long_name = tmp_path / ("x" * 300 + ".png")
    for path in (deep, long_name):
        assert main(["generate", "a red circle", "--model", "tiny", "--backend", "torch", "--steps", "1", "-o",
                     str(path)]) == 1
        line = one_line(capsys.readouterr().err)
        assert "too long" in line and len(line) < 400
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing created


def test_a_second_ctrl_c_while_exiting_keeps_exit_130(tmp_path):
    """Hostile probe: a second Ctrl-C 0.05-0.2 s after the first, while the interrupted run
    was exiting, ended it by the signal (exit -2) instead of 130."""
    env = dict(os.environ, ANSWER_TRT_CACHE=str(tmp_path / "cache"))
    out = tmp_path / "x.png"
    proc = subprocess.Popen([sys.executable, "-m", "answer_trt.cli", "generate", "a red circle", "--model", "tiny",
                             "--backend", "torch", "--scheduler", "euler", "--steps", "900", "--batch", "16", "-o",
                             str(out)], env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(8)  # loaded and denoising by now on a slow machine
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = wait_for_exit(proc, 60)
    assert proc.returncode == 130, err
    assert "interrupted" in one_line(err)
    assert not out.exists()


def test_a_deleted_current_folder_is_one_line(tmp_path):
    """Hostile probe: run from a deleted folder, torch's MKL ended the run with its own
    'FATAL ERROR: Cannot load libtorch_cpu.so'."""
    gone = tmp_path / "gone"
    gone.mkdir()
    env = dict(os.environ, ANSWER_TRT_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH")])))
    command = (f"cd {gone} && rmdir {gone} && {sys.executable} -m answer_trt.cli generate 'a red circle' --model tiny "
               f"--backend torch --steps 1 -o x.png")
    proc = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "current folder was deleted" in one_line(proc.stderr)


def test_a_client_that_hangs_up_mid_body_is_no_traceback(caplog):
    """Hostile probe: a client that sent half its body and hung up left Starlette's
    ClientDisconnect traceback in the server log."""
    import asyncio

    pytest.importorskip("fastapi")
    from answer_trt.serving.http import make_api

    class NoServer:
        model_name, backend, health = "tiny", "onnxruntime", {"status": "ok"}

        async def run(self, request, timeout_s=None):
            raise AssertionError("never reached")

        def stats(self):
            return {}

    app = make_api(NoServer())
    messages = iter([{"type": "http.request", "body": b'{"prompt": ', "more_body": True},
                     {"type": "http.disconnect"}])
    sent = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/generate", "raw_path": b"/v1/generate",
             "root_path": "", "scheme": "http", "query_string": b"", "server": ("127.0.0.1", 8000),
             "client": ("127.0.0.1", 1), "http_version": "1.1", "asgi": {"version": "3.0"},
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"500")]}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 400
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.exc_info]
