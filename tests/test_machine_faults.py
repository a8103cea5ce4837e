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


def test_ctrl_c_during_generate_is_one_line_exit_130_and_writes_nothing(tmp_path):
    env = dict(os.environ, ANSWER_TRT_CACHE=str(tmp_path / "cache"))
    out = tmp_path / "x.png"
    proc = subprocess.Popen([sys.executable, "-m", "answer_trt.cli", "generate", "a red circle", "--model", "tiny",
                             "--backend", "torch", "--scheduler", "euler", "--steps", "900", "--batch", "16", "-o",
                             str(out)], env=env,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(8)  # loaded and denoising by now on a slow machine
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in one_line(err)
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == []  # no PNG, no temporary file


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
    that file, once it is old enough not to be a write in progress."""
    from answer_trt.files import STALE_TEMPORARY_S, write_text_atomic

    stale, fresh, other = tmp_path / ".out.png.abc123.tmp", tmp_path / ".out.png.def456.tmp", tmp_path / ".x.tmp"
    for path in (stale, fresh, other):
        path.write_text("half")
    old = time.time() - STALE_TEMPORARY_S - 10
    os.utime(stale, (old, old))
    write_text_atomic(tmp_path / "out.png", "whole")
    assert (tmp_path / "out.png").read_text() == "whole"
    assert not stale.exists() and fresh.exists() and other.exists()


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
