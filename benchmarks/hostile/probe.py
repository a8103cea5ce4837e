"""Hostile inputs against answer-trt, eleven classes (issue 23's seven, and issue 32's four in walk.py).

    PYTHONPATH=. python benchmarks/hostile/probe.py [--only CLASS,...] [--json PATH]

Builds one tiny engines folder, then runs each input and judges it CLEAN when: a user error
is one line on stderr (or a one-line JSON error body) with exit code 2 (1 for the machine's
errors, 130 for Ctrl-C), HTTP answers 4xx (never 5xx) to bad requests, no traceback appears,
nothing outside what the command owns changed, nothing is half-written, and a good input
still works afterwards. Prints the table and writes benchmarks/results/hostile-probe.json.
A script, not a test: stdlib + the project; every server listens on 127.0.0.1 and is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import walk  # noqa: E402 - beside this script: the generated and file-borne classes

PY = sys.executable
CLASSES = ["HTTP serving", "concurrency", "interruptions", "environment", "CLI flags",
           "engines-folder tampering", "Python API", "request fields", "replay and PNG metadata", "model folders",
           "LoRA and variants"]
RESULTS: list[dict[str, Any]] = []


# --- helpers ------------------------------------------------------------------------


def snap(*roots: Path) -> dict[str, str]:
    """Every entry under each root: file digests (small files) or sizes, links, folders."""
    tree: dict[str, str] = {}
    for root in roots:
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_symlink():
                tree[str(path)] = "-> " + os.readlink(path)
            elif path.is_dir():
                tree[str(path)] = "dir"
            elif path.is_file():
                tree[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return tree


def diff(before: dict[str, str], after: dict[str, str], owned: Callable[[str], bool] = lambda _p: False) -> list[str]:
    keys = set(before) | set(after)
    return sorted(k for k in keys if before.get(k) != after.get(k) and not owned(k))


def record(cls: str, name: str, inp: Any, *, outcome: Any, clean: bool, why: str = "", stderr: str = "",
           changed: list[str] | None = None) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    RESULTS.append({"class": cls, "name": name, "input": inp, "outcome": outcome, "stderr_lines": len(lines),
                    "stderr": stderr[-1500:], "traceback": "Traceback" in stderr, "changed": changed or [],
                    "clean": clean, "why": why})
    mark = "clean" if clean else f"FAIL ({why})"
    print(f"[{cls}] {name}: {outcome} -> {mark}", flush=True)


def env_for(cache: Path, **extra: str | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", ANSWER_TRT_CACHE=str(cache))
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def cli(args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 180,
        shell_prefix: str = "", shell_suffix: str = "") -> subprocess.CompletedProcess[str]:
    command = [PY, "-m", "answer_trt.cli", *args]
    if shell_prefix or shell_suffix:
        import shlex
        command = ["bash", "-c", f"{shell_prefix} {shlex.join(command)} {shell_suffix}"]
    try:
        return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              errors="replace")
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return subprocess.CompletedProcess(command, -999, "", err + "\n[probe: timed out]")


def judge(proc: subprocess.CompletedProcess[str], expect: str) -> tuple[bool, str]:
    """expect: ok (0), user (2, one line), machine (1, one line), user|machine, ok|user, int (130, one line)."""
    if expect in ("ok|user", "ok|machine"):
        ok, why = judge(proc, "ok")
        return (ok, why) if ok or proc.returncode == 0 else judge(proc, expect[3:])
    err = proc.stderr or ""
    lines = [line for line in err.splitlines() if line.strip()]
    if "Traceback" in err:
        return False, "traceback"
    codes = {"ok": {0}, "user": {2}, "machine": {1}, "user|machine": {1, 2}, "int": {130}}[expect]
    if proc.returncode not in codes:
        return False, f"exit {proc.returncode}, expected {sorted(codes)}"
    if expect != "ok":
        if len(lines) != 1:
            return False, f"{len(lines)} stderr lines"
    return True, ""


def png_ok(path: Path) -> bool:
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return data.startswith(b"\x89PNG") and data.rstrip().endswith(b"IEND\xaeB`\x82")


def run_case(cls: str, name: str, args: list[str], expect: str, env: dict[str, str], watch: list[Path],
             sandbox: Path, cwd: Path | None = None, owned: Callable[[str], bool] | None = None, **kw: Any) -> None:
    """One CLI input: run it, judge its exit, and check that nothing outside ``sandbox``
    changed, and (for refusals) nothing inside it either."""
    before = snap(*watch, sandbox)
    started = time.time()
    proc = cli(args, env, cwd=cwd, **kw)
    after = snap(*watch, sandbox)
    clean, why = judge(proc, expect)

    def mine(path: str) -> bool:
        if owned is not None and owned(path):
            return True
        return proc.returncode == 0 and expect.startswith("ok") and path.startswith(str(sandbox))

    changed = diff(before, after, mine)
    if clean and changed:
        clean, why = False, f"changed {changed[:3]}"
    if clean and expect == "ok":
        pngs = [Path(p) for p in after if p.endswith(".png") and p.startswith(str(sandbox))]
        if any(not png_ok(p) for p in pngs):
            clean, why = False, "half-written PNG"
    record(cls, name, args, outcome={"exit": proc.returncode, "s": round(time.time() - started, 1)}, clean=clean,
           why=why, stderr=proc.stderr, changed=changed)


# --- the tiny engines folder ------------------------------------------------------------


class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache = root / "cache"
        self.engines = root / "engines"
        self.env = env_for(self.cache)
        self.n = 0

    def sandbox(self) -> Path:
        self.n += 1
        path = self.root / "boxes" / f"b{self.n}"
        path.mkdir(parents=True)
        return path

    def gen(self, out: Path, *extra: str, engines: Path | None = None) -> list[str]:
        return ["generate", "a red circle", "--engines", str(engines or self.engines), "--steps", "1",
                *extra, "-o", str(out)]

    def good_still_works(self, cls: str) -> None:
        box = self.sandbox()
        run_case(cls, "afterwards: a good generate", self.gen(box / "ok.png"), "ok", self.env,
                 [self.engines], box)


# --- CLI flags ------------------------------------------------------------------------


def cli_flags(w: World) -> None:
    cls = "CLI flags"
    bad = [
        ["--steps", "0"], ["--steps", "1001"], ["--steps", str(10**30)], ["--steps", "abc"], ["--steps", "1e3"],
        ["--batch", "0"], ["--batch", "100000"], ["--seed", "-1"], ["--seed", str(2**64)], ["--seed", "1.5"],
        ["--guidance-scale", "nan"], ["--guidance-scale", "inf"], ["--guidance-scale", "1e308"],
        ["--negative-scale", "-1e9"], ["--height", "33"], ["--height", "99999999"], ["--width", "0"],
        ["--method", "foo"], ["--scheduler", "foo"], ["--dns-steps", "0"], ["--dns-steps", str(10**12)],
        ["--chain-min-sigma", "nan"], ["--drift-tau", "-inf"], ["--guidance-rescale", "1e9"],
        ["--seeds", "1,,2"], ["--seeds", "1,-2"], ["--seeds", ",".join(["1"] * 300)], ["--seed", "random", "--seeds",
                                                                                           "1,2"],
        ["--mode", "sideways"], ["--guidance-min-sigma", "-1"],
    ]
    for flags in bad:
        box = w.sandbox()
        run_case(cls, " ".join(flags)[:60], w.gen(box / "x.png", *flags), "user", w.env, [w.engines], box)
    box = w.sandbox()
    for name, args, expect in [
        ("-o .jpg", w.gen(box / "x.jpg"), "user"),
        ("-o missing folder", w.gen(box / "no" / "x.png"), "user"),
        ("-o a folder", w.gen(box), "user"),
        ("-o empty", w.gen(Path("")), "user"),
        ("--from-png missing", ["generate", "--from-png", str(box / "none.png"), "--engines", str(w.engines)], "user"),
        ("--engines and --model", ["generate", "a", "--engines", str(w.engines), "--model", "tiny"], "user"),
        ("--engines missing", ["generate", "a", "--engines", str(box / "none"), "-o", str(box / "y.png")], "user"),
        ("info missing", ["info", str(box / "none")], "user"),
        ("unknown command", ["frobnicate"], "user"),
        ("bench --runs 1001", ["bench", "--engines", str(w.engines), "--runs", "1001"], "user"),
        ("bench --warmup 1e9", ["bench", "--engines", str(w.engines), "--warmup", str(10**9)], "user"),
        ("bench --json folder missing", ["bench", "--engines", str(w.engines), "--steps", "1", "--runs", "1",
                                         "--json", str(box / "no" / "b.json")], "user"),
        ("build --max-batch 0", ["build", "--model", "tiny", "--out", str(box / "e"), "--max-batch", "0"], "user"),
        ("build --max-batch 1e9", ["build", "--model", "tiny", "--out", str(box / "e"), "--max-batch",
                                   str(10**9)], "user"),
        ("build --height 7", ["build", "--model", "tiny", "--out", str(box / "e"), "--height", "7"], "user"),
        ("serve --port 70000", ["serve", "--engines", str(w.engines), "--port", "70000"], "user"),
        ("serve --replicas 0", ["serve", "--engines", str(w.engines), "--replicas", "0"], "user"),
        ("load --requests 0", ["load", "--serve", "http://127.0.0.1:1", "--requests", "0"], "user"),
        ("--model missing folder", ["generate", "a", "--model", str(box / "nomodel"), "-o", str(box / "z.png")],
         "user"),
    ]:
        run_case(cls, name, args, expect, w.env, [w.engines], box)
    # prompts: undecodable bytes in argv (surrogate-escaped), a 100 kB prompt, control characters
    box = w.sandbox()
    run_case(cls, "prompt with undecodable byte", w.gen(box / "x.png") [:1] + ["a \udcff b"] + w.gen(box / "x.png")[2:],
             "ok|user", w.env, [w.engines], box)
    box = w.sandbox()
    run_case(cls, "prompt 100 kB", ["generate", "word " * 20000, "--engines", str(w.engines), "--steps", "1", "-o",
                                    str(box / "x.png")], "ok", w.env, [w.engines], box)
    box = w.sandbox()
    run_case(cls, "prompt with control chars", ["generate", "a\x1b[31m\tb\r\nc", "--engines", str(w.engines),
                                                "--steps", "1", "-o", str(box / "x.png")], "ok", w.env,
             [w.engines], box)
    w.good_still_works(cls)


# --- engines-folder tampering -----------------------------------------------------------


def tampering(w: World) -> None:
    cls = "engines-folder tampering"
    outside = w.root / "outside.bin"
    outside.write_bytes(b"secret" * 100)

    def manifest(folder: Path) -> dict[str, Any]:
        return json.loads((folder / "manifest.json").read_text())

    def save(folder: Path, data: dict[str, Any]) -> None:
        (folder / "manifest.json").write_text(json.dumps(data))

    def rehash(folder: Path, rel: str) -> None:
        data = manifest(folder)
        data["files"][rel] = hashlib.sha256((folder / rel).read_bytes()).hexdigest()
        save(folder, data)

    def edit_scheduler(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
        def apply(folder: Path) -> None:
            path = folder / "scheduler" / "scheduler_config.json"
            config = json.loads(path.read_text())
            change(config)
            path.write_text(json.dumps(config))
            rehash(folder, "scheduler/scheduler_config.json")
        return apply

    def external_data(location: str) -> Callable[[Path], None]:
        def apply(folder: Path) -> None:
            import onnx
            model = onnx.load(str(folder / "unet.onnx"))
            onnx.save_model(model, str(folder / "unet.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=location, size_threshold=0)
            rehash(folder, "unet.onnx")
        return apply

    def set_key(path: list[str], value: Any) -> Callable[[Path], None]:
        def apply(folder: Path) -> None:
            data = manifest(folder)
            node = data
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            save(folder, data)
        return apply

    def symlink_unet(folder: Path) -> None:
        (folder / "unet.onnx").unlink()
        (folder / "unet.onnx").symlink_to(outside)

    cases: dict[str, Callable[[Path], None]] = {
        "manifest deleted": lambda f: (f / "manifest.json").unlink(),
        "manifest not JSON": lambda f: (f / "manifest.json").write_text("{nope"),
        "manifest a list": lambda f: (f / "manifest.json").write_text("[1, 2]"),
        "manifest 5 MB": lambda f: (f / "manifest.json").write_text(
            json.dumps({**manifest(f), "pad": "x" * 5_000_000})),
        "manifest 1000 levels deep": lambda f: (f / "manifest.json").write_text("[" * 1000 + "]" * 1000),
        "manifest invalid UTF-8": lambda f: (f / "manifest.json").write_bytes(b"\xff\xfe{}"),
        "unet.onnx one byte edited": lambda f: (f / "unet.onnx").write_bytes(
            (lambda b: b[:-10] + bytes([b[-10] ^ 1]) + b[-9:])((f / "unet.onnx").read_bytes())),
        "vae truncated": lambda f: (f / "vae_decoder.onnx").write_bytes((f / "vae_decoder.onnx").read_bytes()[:1000]),
        "files names ../outside.bin": set_key(["files", "../outside.bin"], "0" * 64),
        "files names /etc/passwd": set_key(["files", "/etc/passwd"], "0" * 64),
        "unet.onnx a link outside": symlink_unet,
        "scheduler num_train_timesteps 1e9": edit_scheduler(lambda c: c.update(num_train_timesteps=10**9)),
        "scheduler class os.system": edit_scheduler(lambda c: c.update(_class_name="os.system")),
        "scheduler beta_end nan": edit_scheduler(lambda c: c.update(beta_end=float("nan"))),
        "scheduler not JSON": lambda f: ((f / "scheduler" / "scheduler_config.json").write_text("{x"),
                                         rehash(f, "scheduler/scheduler_config.json")),
        "unlisted external data": external_data("unet.onnx.data"),
        "external data outside the folder": external_data("../outside.data"),
        "tokenizer file deleted": lambda f: (f / "tokenizer" / "answer-trt-tokenizer.json").unlink(),
        "max_batch 1e12": set_key(["max_batch"], 10**12),
        "unet profile batch 1e9": set_key(["components", "unet", "profile", "batch"], [1, 10**9, 10**9]),
        "height -5": set_key(["height"], -5),
        "backend tensorrt": set_key(["backend"], "tensorrt"),
        "files a string": set_key(["files"], "everything"),
        "component file ../outside.bin": set_key(["components", "unet", "file"], "../outside.bin"),
    }
    for name, tamper in cases.items():
        box = w.sandbox()
        folder = box / "engines"
        shutil.copytree(w.engines, folder, symlinks=True)
        try:
            tamper(folder)
        except Exception as exc:  # noqa: BLE001
            record(cls, name, name, outcome=f"probe could not tamper: {exc!r}", clean=True, why="skipped")
            continue
        # generate must refuse in one line, touch nothing (the folder included), write no PNG
        # a value the folder may hold (a profile's batch bound) need only not be trusted beyond the request's bounds
        expect = "ok|user" if name == "unet profile batch 1e9" else "user"
        run_case(cls, name, w.gen(box / "x.png", engines=folder), expect, w.env, [w.engines, outside], box)
    w.good_still_works(cls)


# --- environment ----------------------------------------------------------------------


def environment(w: World) -> None:
    cls = "environment"
    a_file = w.root / "a-file"
    a_file.write_text("x")
    long_dir = w.root / ("c" * 300)

    def gen_model(out: Path, *extra: str) -> list[str]:
        return ["generate", "a red circle", "--model", "tiny", "--steps", "1", *extra, "-o", str(out)]

    cases: list[tuple[str, dict[str, str | None], str, str, str]] = [
        ("ANSWER_TRT_CACHE a file", {"ANSWER_TRT_CACHE": str(a_file)}, "model", "user|machine", ""),
        ("ANSWER_TRT_CACHE under /proc", {"ANSWER_TRT_CACHE": "/proc/answer-trt-cache"}, "model", "user|machine", ""),
        ("ANSWER_TRT_CACHE empty", {"ANSWER_TRT_CACHE": "", "HOME": str(w.root / "home")}, "model", "ok|refuse", ""),
        ("ANSWER_TRT_CACHE name over 255", {"ANSWER_TRT_CACHE": str(long_dir)}, "model", "user|machine", ""),
        ("HOME unset, no cache", {"ANSWER_TRT_CACHE": None, "HOME": None}, "model", "ok|refuse", ""),
        ("ANSWER_TRT_MAX_MEMORY_GB abc", {"ANSWER_TRT_MAX_MEMORY_GB": "abc"}, "engines", "user", ""),
        ("ANSWER_TRT_MAX_MEMORY_GB -1", {"ANSWER_TRT_MAX_MEMORY_GB": "-1"}, "engines", "user", ""),
        ("ANSWER_TRT_MAX_MEMORY_GB nan", {"ANSWER_TRT_MAX_MEMORY_GB": "nan"}, "engines", "user", ""),
        ("ANSWER_TRT_MAX_MEMORY_GB 1e-9", {"ANSWER_TRT_MAX_MEMORY_GB": "1e-9"}, "engines", "user", ""),
        ("ANSWER_TRT_MAX_MEMORY_GB inf", {"ANSWER_TRT_MAX_MEMORY_GB": "inf"}, "engines", "ok|refuse", ""),
        ("stdout closed", {}, "engines", "ok", "1>&-"),
        ("stderr closed", {}, "engines", "ok", "2>&-"),
        ("stdout /dev/full", {}, "engines", "ok", ">/dev/full"),
        ("stdin closed", {}, "engines", "ok", "0<&-"),
        ("file size limit 1 kB (full disk)", {}, "engines", "machine", "ulimit -f 1;"),
        ("open files limit 12", {}, "engines", "ok|machine", "ulimit -n 12;"),
        ("PYTHONIOENCODING ascii, non-ASCII prompt", {"PYTHONIOENCODING": "ascii", "LANG": "C", "LC_ALL": "C"},
         "engines-utf", "ok", ""),
        ("TMPDIR missing", {"TMPDIR": str(w.root / "no-tmp")}, "engines", "ok", ""),
        ("cwd deleted, relative -o", {}, "cwd-gone", "user|machine", ""),
    ]
    for name, extra, kind, expect, shell in cases:
        box = w.sandbox()
        env = env_for(w.cache, **extra)
        out = box / "x.png"
        cwd = None
        if kind == "model":
            args = gen_model(out)
        elif kind == "engines-utf":
            args = ["generate", "caf\u00e9 \u2603 \U0001F600", "--engines", str(w.engines), "--steps", "1",
                    "-o", str(out)]
        elif kind == "cwd-gone":
            cwd = box / "gone"
            cwd.mkdir()
            args = w.gen(Path("x.png"))
            shell = f"cd {cwd} && rmdir {cwd} &&"
        else:
            args = w.gen(out)
        prefix, suffix = (shell, "") if shell.endswith(";") or shell.endswith("&&") else ("", shell)
        home = w.root / "home"
        gone = str(box / "gone")  # the cwd-deleted case removes it itself
        owned: Callable[[str], bool] = lambda p, home=home, gone=gone: p.startswith(  # noqa: E731
            (str(home), str(w.cache), gone))
        if expect == "ok|refuse":
            before = snap(w.engines, box)
            proc = cli(args, env, cwd=cwd, shell_prefix=prefix, shell_suffix=suffix)
            ok_clean, why = judge(proc, "ok")
            if not ok_clean:
                ok_clean, why = judge(proc, "user|machine")
            box_is_mine = proc.returncode == 0
            changed = diff(before, snap(w.engines, box),
                           lambda p, box=box, mine=box_is_mine: mine and p.startswith(str(box)))
            if ok_clean and proc.returncode == 0 and not png_ok(out):
                ok_clean, why = False, "exit 0 without the PNG"
            record(cls, name, {"env": extra, "args": args}, outcome={"exit": proc.returncode}, clean=ok_clean and not
                   changed, why=why or (f"changed {changed[:3]}" if changed else ""), stderr=proc.stderr,
                   changed=changed)
            continue
        run_case(cls, name, args, expect, env, [w.engines], box, cwd=cwd, shell_prefix=prefix, shell_suffix=suffix,
                 owned=owned)
        if expect == "ok" and not png_ok(out) or RESULTS[-1]["outcome"]["exit"] == 0 and not png_ok(out):
            RESULTS[-1].update(clean=False, why="exit 0 without the PNG")
    w.good_still_works(cls)


# --- interruptions ----------------------------------------------------------------------


def interruptions(w: World) -> None:
    cls = "interruptions"

    def interrupt(name: str, args: list[str], sig: int, after_s: float, box: Path, check: Callable[[], str],
                  env: dict[str, str] | None = None, watch: list[Path] | None = None,
                  follow: list[str] | None = None) -> None:
        watch = watch if watch is not None else [w.engines]
        before = snap(*watch)
        proc = subprocess.Popen([PY, "-m", "answer_trt.cli", *args], env=env or w.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace")
        time.sleep(after_s)
        proc.send_signal(sig)
        if sig == signal.SIGINT and name.endswith("twice"):
            time.sleep(0.2)
            proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            err += "\n[probe: did not stop in 120 s]"
        code = proc.returncode
        lines = [line for line in err.splitlines() if line.strip()]
        clean, why = True, ""
        if "Traceback" in err:
            clean, why = False, "traceback"
        elif sig == signal.SIGINT and code not in (130, 0):
            clean, why = False, f"exit {code}, expected 130"
        elif sig == signal.SIGINT and code == 130 and (not lines or "interrupted" not in lines[-1]):
            clean, why = False, "no 'interrupted' line"
        elif sig == signal.SIGTERM and code not in (-15, 143, 130, 0):
            clean, why = False, f"exit {code} on SIGTERM"
        changed = diff(before, snap(*watch))
        if clean and changed:
            clean, why = False, f"changed {changed[:3]}"
        if clean:
            problem = check()
            if problem:
                clean, why = False, problem
        if clean and follow:  # the next ordinary run works and removes leftovers
            proc2 = cli(follow, w.env)
            ok, why2 = judge(proc2, "ok")
            problem = "" if ok else f"next run: {why2}: {proc2.stderr.strip()[-200:]}"
            problem = problem or check(after_next=True)  # type: ignore[call-arg]
            if problem:
                clean, why = False, problem
        record(cls, name, {"args": args, "signal": signal.Signals(sig).name, "after_s": after_s},
               outcome={"exit": code}, clean=clean, why=why, stderr=err)

    def out_whole(box: Path) -> Callable[..., str]:
        def check(after_next: bool = False) -> str:
            names = [p.name for p in box.iterdir()]
            for p in box.glob("*.png"):
                if not png_ok(p):
                    return f"half-written {p.name}"
            if after_next and [n for n in names if n.startswith(".") or n.endswith(".tmp")]:
                return f"leftovers after the next run: {names}"
            if not after_next and not all(n.endswith(".png") or n.startswith(".") for n in names):
                return f"unexpected {names}"
            return ""
        return check

    def build_whole(box: Path, out: Path) -> Callable[..., str]:
        def check(after_next: bool = False) -> str:
            if out.exists() and (out / "manifest.json").exists():
                proc = cli(["info", str(out)], w.env)
                if proc.returncode != 0 or "all match" not in proc.stdout:
                    return f"published folder not whole: {proc.stderr.strip()[-200:]}"
            extra = [p.name for p in box.iterdir() if p != out]
            if after_next and extra:
                return f"leftovers after the next build: {extra}"
            return ""
        return check

    long_gen = lambda out: ["generate", "a red circle", "--engines", str(w.engines), "--steps", "900",  # noqa: E731
                            "--method", "dns", "--mode", "inner", "--dns-steps", "50", "-o", str(out)]
    for sig, at in [(signal.SIGINT, 4.0), (signal.SIGINT, 1.0), (signal.SIGINT, 0.3), (signal.SIGTERM, 5.0),
                    (signal.SIGKILL, 5.0), (signal.SIGHUP, 5.0)]:
        box = w.sandbox()
        interrupt(f"generate, {signal.Signals(sig).name} at {at}s", long_gen(box / "x.png"), sig, at, box,
                  out_whole(box), follow=w.gen(box / "x.png") if sig != signal.SIGINT else None)
    box = w.sandbox()
    interrupt("generate, SIGINT twice", long_gen(box / "x.png"), signal.SIGINT, 4.0, box, out_whole(box))
    # a batch at the built maximum (4), so that a batch of PNGs would be written
    batch = ["generate", "a", "--engines", str(w.engines), "--steps", "900", "--batch", "4", "-o"]
    for at in (4.5, 5.5):
        box = w.sandbox()
        interrupt(f"generate --batch 4, SIGINT at {at}s", [*batch, str(box / "x.png")], signal.SIGINT, at, box,
                  out_whole(box))
    box = w.sandbox()
    interrupt("generate --batch 4, SIGKILL at 5s", [*batch, str(box / "x.png")], signal.SIGKILL, 5.0, box,
              out_whole(box), follow=w.gen(box / "x.png"))
    # builds
    for sig, at in [(signal.SIGINT, 6.0), (signal.SIGINT, 12.0), (signal.SIGKILL, 8.0), (signal.SIGTERM, 8.0)]:
        box = w.sandbox()
        out = box / "e"
        interrupt(f"build, {signal.Signals(sig).name} at {at}s", ["build", "--model", "tiny", "--out", str(out)], sig,
                  at, box, build_whole(box, out),
                  follow=["build", "--model", "tiny", "--out", str(out), "--force"] if sig == signal.SIGKILL else None)
    # first use of an empty cache, interrupted, then used again
    cache = w.root / "icache"
    box = w.sandbox()
    interrupt("generate --model tiny on an empty cache, SIGINT at 7s",
              ["generate", "a", "--model", "tiny", "--steps", "1", "-o", str(box / "x.png")], signal.SIGINT, 7.0, box,
              out_whole(box), env=env_for(cache), watch=[w.engines])
    proc = cli(["generate", "a", "--model", "tiny", "--steps", "1", "-o", str(box / "y.png")], env_for(cache))
    ok, why = judge(proc, "ok")
    leftovers = [str(p.relative_to(cache)) for p in cache.rglob("*") if "tmp" in p.name or "staging" in p.name]
    record(cls, "the interrupted cache is used again", "generate --model tiny", outcome={"exit": proc.returncode},
           clean=ok and not leftovers, why=why or (f"leftovers {leftovers[:3]}" if leftovers else ""),
           stderr=proc.stderr)
    box = w.sandbox()
    interrupt("bench, SIGINT at 5s", ["bench", "--engines", str(w.engines), "--steps", "20", "--runs", "50",
                                      "--json", str(box / "b.json")], signal.SIGINT, 5.0, box,
              lambda after_next=False: "" if not (box / "b.json").exists() or
              json.loads((box / "b.json").read_text()) is not None else "half-written json")
    box = w.sandbox()
    interrupt("info, SIGINT at 0.5s", ["info", str(w.engines)], signal.SIGINT, 0.5, box, lambda after_next=False: "")
    w.good_still_works(cls)


# --- concurrency ----------------------------------------------------------------------


def concurrency(w: World, pipe: Any) -> None:
    cls = "concurrency"

    def parallel(args_list: list[list[str]], env: dict[str, str]) -> list[subprocess.CompletedProcess[str]]:
        procs = [subprocess.Popen([PY, "-m", "answer_trt.cli", *a], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, errors="replace") for a in args_list]
        done = []
        for a, p in zip(args_list, procs):
            try:
                out, err = p.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            done.append(subprocess.CompletedProcess(a, p.returncode, out, err))
        return done

    def verdict(name: str, procs: list[subprocess.CompletedProcess[str]], allowed: str, extra: str = "") -> None:
        problems = []
        for p in procs:
            ok, why = judge(p, "ok")
            if not ok and allowed != "ok":
                ok, why = judge(p, allowed)
            if not ok:
                problems.append(why)
        if extra:
            problems.append(extra)
        record(cls, name, [p.args for p in procs], outcome={"exits": [p.returncode for p in procs]},
               clean=not problems, why="; ".join(problems), stderr="\n".join(p.stderr for p in procs))

    cache = w.root / "ccache"
    box = w.sandbox()
    procs = parallel([["generate", "a", "--model", "tiny", "--steps", "1", "-o", str(box / f"x{i}.png")]
                      for i in range(3)], env_for(cache))
    folders = [p for p in cache.rglob("manifest.json")]
    verdict("3 x generate --model tiny on an empty cache", procs, "ok",
            "" if len(folders) == 1 and all(png_ok(box / f"x{i}.png") for i in range(3)) else
            f"{len(folders)} engines folders / missing PNGs")
    box = w.sandbox()
    procs = parallel([["build", "--model", "tiny", "--out", str(box / "e")]] * 2, w.env)
    info = cli(["info", str(box / "e")], w.env)
    verdict("2 x build --out the same folder", procs, "user",
            "" if "all match" in info.stdout else "folder not whole")
    box = w.sandbox()
    procs = parallel([w.gen(box / "x.png", "--seed", str(i)) for i in range(3)], w.env)
    verdict("3 x generate -o the same file", procs, "ok", "" if png_ok(box / "x.png") and
            [p.name for p in box.iterdir()] == ["x.png"] else f"left {[p.name for p in box.iterdir()]}")
    copy = box / "engines"
    shutil.copytree(w.engines, copy)
    procs = parallel([["build", "--model", "tiny", "--out", str(copy), "--force"], w.gen(box / "y.png", engines=copy),
                      w.gen(box / "z.png", engines=copy)], w.env)
    verdict("build --force while 2 generates read the folder", procs, "user",
            "" if "all match" in cli(["info", str(copy)], w.env).stdout else "folder not whole")

    # in-process: threads on one pipeline
    import numpy as np

    def threads(name: str, calls: list[Callable[[], Any]], want_equal: bool = False,
                own: tuple[type[BaseException], ...] = ()) -> None:
        """``own``: the caller's own exceptions (a callback's), which must come back unchanged."""
        results: list[Any] = [None] * len(calls)

        def one(i: int) -> None:
            try:
                results[i] = calls[i]()
            except Exception as exc:  # noqa: BLE001
                results[i] = exc
        ts = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(300)
        problems = []
        for r in results:
            if isinstance(r, Exception):
                from answer_trt.errors import UserInputError
                if isinstance(r, own):
                    continue
                if not isinstance(r, UserInputError) or "\n" in str(r):
                    problems.append(f"{type(r).__name__}: {str(r)[:100]}")
        if want_equal and not problems:
            serial = calls[0]()
            arrays = [np.asarray(r.images[0]) for r in results]
            if not all((a == np.asarray(serial.images[0])).all() for a in arrays[:1]):
                problems.append("threaded result differs from serial")
        record(cls, name, f"{len(calls)} threads", outcome=[type(r).__name__ for r in results], clean=not problems,
               why="; ".join(problems))

    g = pipe.generate
    threads("4 threads, same request", [lambda: g("a red circle", steps=2, seed=1)] * 4, want_equal=True)
    threads("4 threads, different methods", [lambda m=m: g("a", steps=2, method=m) for m in
                                             ("answer", "cfg", "dns", "answer")])
    threads("4 threads, different schedulers", [lambda s=s: g("a", steps=2, scheduler=s) for s in
                                                ("ddim", "euler", "dpm++", "ddim")])
    threads("4 threads, batches 1..4", [lambda b=b: g("a", steps=1, batch=b) for b in (1, 2, 3, 4)])
    threads("threads, one bad request among good", [lambda: g("a", steps=1), lambda: g("a", steps=0),
                                                     lambda: g("a", steps=1), lambda: g("a", batch=10**9)])

    def raising(*_a: Any) -> None:
        raise KeyboardInterrupt

    threads("threads, a callback that raises ValueError", [lambda: g("a", steps=2),
                                                           lambda: g("a", steps=2, callback=lambda *a: 1 / 0),
                                                           lambda: g("a", steps=2)], own=(ZeroDivisionError,))
    from answer_trt import load
    threads("4 threads load() the same folder", [lambda: load(str(w.engines))] * 4)
    threads("8 threads, one step each", [lambda i=i: g(f"p{i}", steps=1, seed=i) for i in range(8)])
    w.good_still_works(cls)


# --- Python API -------------------------------------------------------------------------


def python_api(w: World, pipe: Any) -> None:
    cls = "Python API"
    import numpy as np

    from answer_trt import load
    from answer_trt.errors import UserInputError
    from answer_trt.schema import from_parameters

    def api(name: str, call: Callable[[], Any], expect: str) -> None:
        """expect: ok, or user (UserInputError, one line)."""
        before = snap(w.engines, w.cache)
        try:
            result = call()
            outcome, clean, why = f"returned {type(result).__name__}", expect == "ok", "" if expect == "ok" else \
                "accepted a bad input"
        except UserInputError as exc:
            text = str(exc)
            outcome = f"UserInputError: {text[:160]}"
            clean = expect == "user" and "\n" not in text.strip()
            why = "" if clean else ("refused a good input" if expect == "ok" else "message not one line")
        except Exception as exc:  # noqa: BLE001
            outcome, clean, why = f"{type(exc).__name__}: {str(exc)[:160]}", False, f"raised {type(exc).__name__}"
        changed = diff(before, snap(w.engines, w.cache))
        if clean and changed:
            clean, why = False, f"changed {changed[:3]}"
        record(cls, name, name, outcome=outcome, clean=clean, why=why, changed=changed)

    g = pipe.generate
    api("load(None)", lambda: load(None), "user")  # type: ignore[arg-type]
    api("load(5)", lambda: load(5), "user")  # type: ignore[arg-type]
    api("load(b'tiny')", lambda: load(b"tiny"), "user")  # type: ignore[arg-type]
    api("load('no-such/model-xyz') offline", lambda: load("no-such/model-xyz"), "user")
    api("load(engines, backend='foo')", lambda: load(str(w.engines), backend="foo"), "user")
    api("load(engines, device='tpu')", lambda: load(str(w.engines), device="tpu"), "user")
    api("load(engines, backend=5)", lambda: load(str(w.engines), backend=5), "user")  # type: ignore[arg-type]
    api("generate(None)", lambda: g(None), "user")  # type: ignore[arg-type]
    api("generate(5)", lambda: g(5), "user")  # type: ignore[arg-type]
    api("generate(b'a')", lambda: g(b"a"), "user")  # type: ignore[arg-type]
    api("steps=np.int64(2)", lambda: g("a", steps=np.int64(2)), "ok")
    api("steps='2'", lambda: g("a", steps="2"), "user")
    api("steps=2.5", lambda: g("a", steps=2.5), "user")
    api("steps=True", lambda: g("a", steps=True), "user")
    api("steps=10**30", lambda: g("a", steps=10**30), "user")
    api("seed=np.uint64(2**64-1)", lambda: g("a", steps=1, seed=np.uint64(2**64 - 1)), "ok")
    api("seed=-1", lambda: g("a", steps=1, seed=-1), "user")
    api("seed=2**64", lambda: g("a", steps=1, seed=2**64), "user")
    api("seed=1.0", lambda: g("a", steps=1, seed=1.0), "user")
    api("guidance_scale=np.float32(7.5)", lambda: g("a", steps=1, guidance_scale=np.float32(7.5)), "ok")
    api("guidance_scale=nan", lambda: g("a", steps=1, guidance_scale=float("nan")), "user")
    api("guidance_scale='7'", lambda: g("a", steps=1, guidance_scale="7"), "user")
    api("guidance_scale=1e308", lambda: g("a", steps=1, guidance_scale=1e308), "user")
    api("batch=10**9", lambda: g("a", steps=1, batch=10**9), "user")
    api("batch=np.int32(2)", lambda: g("a", steps=1, batch=np.int32(2)), "ok")
    api("height=np.int64(32)", lambda: g("a", steps=1, height=np.int64(32)), "ok")
    api("height=31", lambda: g("a", steps=1, height=31), "user")
    api("unknown keyword stepz", lambda: g("a", stepz=2), "user")
    api("negative_prompt=5", lambda: g("a", steps=1, negative_prompt=5), "user")
    api("prompt with lone surrogate", lambda: g("a \ud800 b", steps=1), "ok|user")
    api("prompt 1 MB", lambda: g("word " * 200_000, steps=1), "ok")
    api("seeds=[1, 2] with batch=3", lambda: g("a", steps=1, seeds=[1, 2], batch=3), "user")
    api("seeds='1,2'", lambda: g("a", steps=1, seeds="1,2"), "user")
    api("seeds=[np.int64(1), 2]", lambda: g("a", steps=1, seeds=[np.int64(1), 2]), "ok")
    api("seeds=[]", lambda: g("a", steps=1, seeds=[]), "user")
    api("method=None", lambda: g("a", steps=1, method=None), "user")
    api("scheduler=5", lambda: g("a", steps=1, scheduler=5), "user")
    api("pipe(prompt, output_type='foo')", lambda: pipe("a", num_inference_steps=1, output_type="foo"), "user")
    api("pipe(prompt, num_inference_steps=np.int64(1), output_type='np')",
        lambda: pipe("a", num_inference_steps=np.int64(1), output_type="np"), "ok")
    api("callback='x'", lambda: g("a", steps=1, callback="x"), "user")
    api("from_parameters('garbage')", lambda: from_parameters("garbage"), "user")
    # construction checks nothing (schema.py): the request is refused where it is run
    api("run(from_parameters('{\"prompt\": 5}'))", lambda: pipe.run(from_parameters('{"prompt": 5}')), "user")
    api("from_parameters('[]')", lambda: from_parameters("[]"), "user")
    api("from_parameters(None)", lambda: from_parameters(None), "user")  # type: ignore[arg-type]
    api("dns_steps=np.int64(0)", lambda: g("a", steps=1, dns_steps=np.int64(0)), "user")
    api("request_config('a', steps=-3)", lambda: pipe.request_config("a", steps=-3), "user")
    for r in RESULTS:  # "ok|user": either is clean
        if r["class"] == cls and r["name"] == "prompt with lone surrogate":
            r["clean"] = r["outcome"].startswith(("returned", "UserInputError")) and "\n" not in r["outcome"]
            r["why"] = "" if r["clean"] else r["why"]
    api("afterwards: a good generate", lambda: g("a red circle", steps=1), "ok")


# --- HTTP serving -----------------------------------------------------------------------

SERVER = r"""
import sys, uvicorn
from pathlib import Path
from answer_trt.serving.app import GenerateServer, ServeConfig
from answer_trt.serving.http import make_api
server = GenerateServer(ServeConfig(Path(sys.argv[1]), port=int(sys.argv[2]), verify=False, max_queue=int(sys.argv[3])))
uvicorn.run(make_api(server), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", limit_max_requests=2000)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def served(w: World, name: str) -> Iterator[tuple[int, Any]]:
    """A server on the tiny folder (queue 4) for the block: its port and its log file."""
    port = free_port()
    log = (w.root / f"{name}.log").open("w+")
    server = subprocess.Popen([PY, "-c", SERVER, str(w.engines), str(port), "4"], env=w.env, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        for _ in range(120):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        yield port, log
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def http_serving(w: World) -> None:
    with served(w, "server") as (port, log):
        _http_inputs(w, "HTTP serving", port, log)
        _http_concurrency(w, port, log)


def request_fields(w: World, pipe: Any) -> None:
    with served(w, "fields-server") as (port, log):
        walk.request_fields(sys.modules[__name__], w, pipe, port, log)


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def server_log_tail(log: Any, mark: int) -> str:
    log.flush()
    log.seek(mark)
    text = log.read()
    log.seek(0, 2)
    return text


def http_case(cls: str, port: int, log: Any, name: str, method: str, path: str, body: bytes | None,
              expect: str, headers: dict[str, str] | None = None) -> None:
    """expect: ok (200), bad (4xx, one-line JSON error), 503ok (200 or 503)."""
    mark = log.seek(0, 2)
    try:
        status, head, data = request(port, method, path, body, {"Content-Type": "application/json", **(headers or {})})
    except Exception as exc:  # noqa: BLE001
        record(cls, name, {"path": path, "body": (body or b"")[:200].decode(errors="replace")},
               outcome=f"{type(exc).__name__}: {exc}", clean=False, why="no response")
        return
    time.sleep(0.05)
    server_err = server_log_tail(log, mark)
    clean, why = True, ""
    if expect == "ok" and status != 200:
        clean, why = False, f"status {status}"
    elif expect == "bad":
        if not 400 <= status < 500:
            clean, why = False, f"status {status}"
        else:
            try:
                parsed = json.loads(data)
                message = parsed["error"] if isinstance(parsed["error"], str) else parsed["error"]["message"]
                if "\n" in message:
                    clean, why = False, "error not one line"
            except Exception:  # noqa: BLE001
                clean, why = False, "error body not {'error': ...} JSON"
    if clean and "Traceback" in server_err:
        clean, why = False, "traceback in the server log"
    record(cls, name, {"method": method, "path": path, "body": (body or b"")[:200].decode(errors="replace")},
           outcome={"status": status, "body": data[:200].decode(errors="replace")}, clean=clean, why=why,
           stderr=server_err)


def _http_inputs(w: World, cls: str, port: int, log: Any) -> None:
    def j(obj: Any) -> bytes:
        return json.dumps(obj).encode()

    G = "/v1/generate"
    cases: list[tuple[str, str, str, bytes | None, str, dict[str, str] | None]] = [
        ("a good request", "POST", G, j({"prompt": "a red circle", "steps": 1}), "ok", None),
        ("not JSON", "POST", G, b"{nope", "bad", None),
        ("a JSON list", "POST", G, b"[1,2]", "bad", None),
        ("a JSON string", "POST", G, b'"a"', "bad", None),
        ("empty body", "POST", G, b"", "bad", None),
        ("body 70 kB", "POST", G, j({"prompt": "x" * 70_000}), "bad", None),
        ("Content-Length abc", "POST", G, b"{}", "bad", {"Content-Length": "abc"}),
        ("Content-Length -5", "POST", G, b"{}", "bad", {"Content-Length": "-5"}),
        ("steps 10**6", "POST", G, j({"prompt": "a", "steps": 10**6}), "bad", None),
        ("steps '2'", "POST", G, j({"prompt": "a", "steps": "2"}), "bad", None),
        ("steps 2.5", "POST", G, j({"prompt": "a", "steps": 2.5}), "bad", None),
        ("steps true", "POST", G, j({"prompt": "a", "steps": True}), "bad", None),
        ("steps 1e400", "POST", G, b'{"prompt": "a", "steps": 1e400}', "bad", None),
        ("seed -1", "POST", G, j({"prompt": "a", "seed": -1}), "bad", None),
        ("seed 2**70", "POST", G, j({"prompt": "a", "seed": 2**70}), "bad", None),
        ("seed 10**5000 digits", "POST", G, b'{"prompt": "a", "seed": ' + b"9" * 5000 + b"}", "bad", None),
        ("batch 10**6", "POST", G, j({"prompt": "a", "batch": 10**6}), "bad", None),
        ("guidance_scale NaN", "POST", G, b'{"prompt": "a", "guidance_scale": NaN}', "bad", None),
        ("guidance_scale Infinity", "POST", G, b'{"prompt": "a", "guidance_scale": Infinity}', "bad", None),
        ("guidance_scale 1e400", "POST", G, b'{"prompt": "a", "guidance_scale": 1e400}', "bad", None),
        ("prompt lone surrogate", "POST", G, b'{"prompt": "a \\ud800 b", "steps": 1}', "ok|bad", None),
        ("prompt 5", "POST", G, j({"prompt": 5}), "bad", None),
        ("prompt null", "POST", G, j({"prompt": None}), "bad", None),
        ("prompt missing", "POST", G, j({"steps": 1}), "bad", None),
        ("unknown field", "POST", G, j({"prompt": "a", "stepz": 1}), "bad", None),
        ("response xml", "POST", G, j({"prompt": "a", "response": "xml"}), "bad", None),
        ("timeout_s -1", "POST", G, j({"prompt": "a", "timeout_s": -1}), "bad", None),
        ("timeout_s 'abc'", "POST", G, j({"prompt": "a", "timeout_s": "abc"}), "bad", None),
        ("timeout_s 1e308", "POST", G, j({"prompt": "a", "steps": 1, "timeout_s": 1e308}), "ok|bad", None),
        ("height 33", "POST", G, j({"prompt": "a", "height": 33}), "bad", None),
        ("height 10**9", "POST", G, j({"prompt": "a", "height": 10**9}), "bad", None),
        ("method foo", "POST", G, j({"prompt": "a", "method": "foo"}), "bad", None),
        ("seeds 'x'", "POST", G, j({"prompt": "a", "seeds": "x"}), "bad", None),
        ("seeds of 1000", "POST", G, j({"prompt": "a", "seeds": list(range(1000))}), "bad", None),
        ("nested 20000 levels", "POST", G, b"[" * 20000 + b"]" * 20000, "bad", None),
        ("nested object in prompt", "POST", G, j({"prompt": {"a": [1, {"b": 2}]}}), "bad", None),
        ("duplicate keys", "POST", G, b'{"prompt": "a", "steps": 1, "steps": 100000}', "bad", None),
        ("invalid UTF-8 body", "POST", G, b'{"prompt": "\xff\xfe"}', "bad", None),
        ("text/plain body", "POST", G, b"prompt=a", "bad", {"Content-Type": "text/plain"}),
        ("GET /v1/generate", "GET", G, None, "bad", None),
        ("unknown route", "GET", "/nope/../../etc/passwd", None, "bad", None),
        ("openai n 10**6", "POST", "/v1/images/generations", j({"prompt": "a", "n": 10**6}), "bad", None),
        ("openai size 99999x99999", "POST", "/v1/images/generations", j({"prompt": "a", "size": "99999x99999"}),
         "bad", None),
        ("openai size 'axb'", "POST", "/v1/images/generations", j({"prompt": "a", "size": "axb"}), "bad", None),
        ("openai model unknown", "POST", "/v1/images/generations", j({"prompt": "a", "model": "dall-e-9"}), "bad",
         None),
        ("a1111 steps -1", "POST", "/sdapi/v1/txt2img", j({"prompt": "a", "steps": -1}), "bad", None),
        ("a1111 width 33", "POST", "/sdapi/v1/txt2img", j({"prompt": "a", "width": 33}), "bad", None),
        ("a1111 batch_size 10**6", "POST", "/sdapi/v1/txt2img", j({"prompt": "a", "batch_size": 10**6}), "bad", None),
        ("a1111 cfg_scale nan", "POST", "/sdapi/v1/txt2img", b'{"prompt": "a", "cfg_scale": NaN}', "bad", None),
        ("a1111 sampler unknown", "POST", "/sdapi/v1/txt2img", j({"prompt": "a", "sampler_name": "???"}), "bad",
         None),
        ("PUT /v1/health", "PUT", "/v1/health", b"{}", "bad", None),
    ]
    for name, method, path, body, expect, headers in cases:
        if expect.startswith("ok|"):
            mark = len(RESULTS)
            http_case(cls, port, log, name, method, path, body, "bad", headers)
            r = RESULTS[mark]
            if r["outcome"]["status"] == 200 and not r["traceback"]:
                r["clean"], r["why"] = True, ""
        else:
            http_case(cls, port, log, name, method, path, body, expect, headers)
    # a body without Content-Length (chunked) above the limit
    mark = log.seek(0, 2)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.putrequest("POST", G)
        conn.putheader("Transfer-Encoding", "chunked")
        conn.putheader("Content-Type", "application/json")
        conn.endheaders()
        chunk = b'{"prompt": "' + b"x" * 100_000 + b'"}'
        conn.send(hex(len(chunk))[2:].encode() + b"\r\n" + chunk + b"\r\n0\r\n\r\n")
        response = conn.getresponse()
        status, data = response.status, response.read()
        conn.close()
        err = server_log_tail(log, mark)
        record(cls, "chunked body 100 kB", "chunked", outcome={"status": status, "body": data[:200].decode()},
               clean=400 <= status < 500 and "Traceback" not in err,
               why="" if 400 <= status < 500 else f"status {status}",
               stderr=err)
    except Exception as exc:  # noqa: BLE001
        record(cls, "chunked body 100 kB", "chunked", outcome=repr(exc), clean=False, why="no response")
    # a client that sends half its body and hangs up; then a good request
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n"
                  b"\r\n{\"prompt\": ")
        s.close()
    except OSError:
        pass
    http_case(cls, port, log, "after a half-sent body: a good request", "POST", G, json.dumps(
        {"prompt": "a", "steps": 1}).encode(), "ok")
    http_case(cls, port, log, "afterwards: health", "GET", "/v1/health", None, "ok")


def _http_concurrency(w: World, port: int, log: Any) -> None:
    cls = "concurrency"

    def burst(name: str, count: int, body: dict[str, Any], allowed: set[int], hang_up: int = 0) -> None:
        mark = log.seek(0, 2)
        statuses: list[Any] = [None] * count

        def one(i: int) -> None:
            try:
                if i < hang_up:
                    s = socket.create_connection(("127.0.0.1", port), timeout=10)
                    data = json.dumps(body).encode()
                    s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
                    time.sleep(0.3)
                    s.close()
                    statuses[i] = "hung up"
                    return
                statuses[i] = request(port, "POST", "/v1/generate", json.dumps(body).encode(),
                                      {"Content-Type": "application/json"}, timeout=120)[0]
            except Exception as exc:  # noqa: BLE001
                statuses[i] = repr(exc)
        ts = [threading.Thread(target=one, args=(i,)) for i in range(count)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(180)
        err = server_log_tail(log, mark)
        bad = [s for s in statuses if s != "hung up" and s not in allowed]
        record(cls, name, {"count": count, "body": body}, outcome=statuses,
               clean=not bad and "Traceback" not in err, why=f"statuses {bad}" if bad else (
                   "traceback in the server log" if "Traceback" in err else ""), stderr=err)

    burst("HTTP: 4 concurrent requests", 4, {"prompt": "a", "steps": 2}, {200})
    burst("HTTP: 16 concurrent, queue 4", 16, {"prompt": "a", "steps": 5}, {200, 503})
    burst("HTTP: 6 concurrent, 3 hang up", 6, {"prompt": "a", "steps": 20}, {200, 503}, hang_up=3)
    burst("HTTP: 4 concurrent with timeout_s 0.01", 4, {"prompt": "a", "steps": 50, "timeout_s": 0.01}, {200, 504})
    burst("HTTP: 4 concurrent, batch 2 each", 4, {"prompt": "a", "steps": 1, "batch": 2, "response": "json"}, {200})
    burst("HTTP: afterwards one request", 1, {"prompt": "a", "steps": 1}, {200})


# --- main -----------------------------------------------------------------------------


def table() -> str:
    rows = ["| class | tried | clean | failures |", "|---|---|---|---|"]
    total = [0, 0]
    for cls in CLASSES:
        mine = [r for r in RESULTS if r["class"] == cls]
        clean = sum(r["clean"] for r in mine)
        total[0] += len(mine)
        total[1] += clean
        rows.append(f"| {cls} | {len(mine)} | {clean} | {len(mine) - clean} |")
    rows.append(f"| all | {total[0]} | {total[1]} | {total[0] - total[1]} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated class keys: "
                        "cli,tamper,env,int,conc,api,http,fields,png,models,lora")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "hostile-probe.json"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    root = Path(tempfile.mkdtemp(prefix="answer-trt-hostile-"))
    w = World(root)
    started = time.time()
    try:
        proc = cli(["build", "--model", "tiny", "--out", str(w.engines)], w.env, timeout=600)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        os.environ.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", ANSWER_TRT_CACHE=str(w.cache))
        pipe = None
        if not only or only & {"conc", "api", "fields"}:
            from answer_trt import load
            pipe = load(str(w.engines))
        steps: list[tuple[str, Callable[[], None]]] = [
            ("cli", lambda: cli_flags(w)), ("tamper", lambda: tampering(w)), ("env", lambda: environment(w)),
            ("api", lambda: python_api(w, pipe)), ("conc", lambda: concurrency(w, pipe)),
            ("http", lambda: http_serving(w)), ("int", lambda: interruptions(w)),
            ("fields", lambda: request_fields(w, pipe)), ("png", lambda: walk.replay(sys.modules[__name__], w)),
            ("models", lambda: walk.model_folders(sys.modules[__name__], w)),
            ("lora", lambda: walk.loras(sys.modules[__name__], w))]
        for key, step in steps:
            if not only or key in only:
                step()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(table())
    print(f"\n{len(RESULTS)} inputs in {time.time() - started:.0f} s")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "PYTHONPATH=. python benchmarks/hostile/probe.py" +
                                          (f" --only {args.only}" if args.only else ""),
                               "table": table(), "inputs": RESULTS}, indent=1, default=str))
    for r in RESULTS:
        if not r["clean"]:
            print(f"FAIL [{r['class']}] {r['name']}: {r['why']} :: {str(r['outcome'])[:200]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
