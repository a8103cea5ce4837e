"""Peer benchmark: answer-trt (CFG and ANSWER) against optimum's ONNX Runtime pipeline
and diffusers eager, on the same model, seeds and prompts. Run from answer-trt's
environment after ``benchmarks/peers/setup.sh``::

    python benchmarks/peers/run.py --model tiny
    python benchmarks/peers/run.py --model sd15-random

It writes the model folder (make_models.py), builds answer-trt's engines
(``answer-trt build``), exports optimum's ONNX folder (``optimum-cli export onnx``) where
they are missing, starts one persistent worker per peer (worker.py, in that peer's
environment), warms each up, then runs alternating rounds (A B C D, A B C D, ...) of N
images, checks the CFG peers' images against diffusers' for the same seeds, and prints
a markdown table and writes JSON (``benchmarks/results/peers-<model>.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (a sibling module of this script)
from harness import PEERS, REFERENCE, PeerResult, Settings, SettingsError  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
README_START, README_END = "<!-- peers:{model} -->", "<!-- /peers:{model} -->"


class Worker:
    """A persistent worker process speaking worker.py's line protocol."""

    def __init__(self, kind: str, peer: str, python: Path, folder: Path, threads: int, log: Path) -> None:
        self.kind = kind
        self.command = [str(python), str(HERE / "worker.py"), "--peer", peer, "--folder", str(folder),
                        "--threads", str(threads)]
        self.log = open(log, "w")
        self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, cwd=ROOT)
        self.info = self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.kind} worker exited (code {self.proc.wait()}): see {self.log.name}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the {self.kind} worker failed: {reply['error']} (log: {self.log.name})")
        return reply

    def run(self, method: str, jobs: list[tuple[str, int]], settings: Settings,
            save_dir: Path | None = None, steps: int | None = None) -> dict[str, Any]:
        request = {"cmd": "run", "method": method, "jobs": jobs, "steps": steps or settings.steps,
                   "guidance_scale": settings.guidance_scale, "size": settings.size,
                   "save_dir": str(save_dir) if save_dir else None}
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(request) + "\n")
        stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.write('{"cmd": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self.log.close()


def run_step(command: list[str], what: str, commands: list[str]) -> None:
    """Run a set-up command, recording it; stop with one line if it fails."""
    line = shlex.join(command)
    commands.append(line)
    print(f"[peers] {what}: {line}", flush=True)
    start = time.perf_counter()
    if subprocess.run(command, cwd=ROOT).returncode != 0:
        raise RuntimeError(f"{what} failed: {line}")
    print(f"[peers] {what}: done in {time.perf_counter() - start:.0f} s", flush=True)


def prepare(settings: Settings, work: Path, venvs: Path, commands: list[str]) -> dict[str, Path]:
    """Model folder, answer-trt engines and optimum's export; each made only when missing
    (``answer-trt build`` itself skips an up-to-date build)."""
    model = work / "models" / settings.model
    run_step([sys.executable, str(HERE / "make_models.py"), "--model", settings.model, "--out", str(model)],
             "model folder", commands)
    folders = {"diffusers": model}
    kinds = {PEERS[p][0] for p in settings.peers}
    for kind, backend in (("answer-trt", ()), ("answer-trt-openvino", ("--backend", "openvino"))):
        if kind not in kinds:
            continue
        # One engines folder per set of build arguments (optimum's settings do not change them).
        plain = dataclasses.replace(settings, optimum_spinning=True, peers=harness.DEFAULT_PEERS)
        engines = work / "engines" / (settings.model + plain.variant() + ("-openvino" if backend else ""))
        answer_trt = Path(sys.executable).with_name("answer-trt")
        run_step([str(answer_trt), "build", "--model", str(model), "--out", str(engines), *settings.build_args,
                  *backend], f"{kind} engines", commands)
        folders[kind] = engines
    for kind, how in (("optimum", ["onnx"]), ("optimum-intel", ["openvino", "--weight-format", "fp32"])):
        if kind in kinds or (kind == "optimum-intel" and "optimum-intel-bf16" in kinds):
            folders[kind] = export(kind, how, model, work / kind / settings.model, venvs, commands)
    if "optimum-intel-bf16" in kinds:  # the same fp32 IR, compiled in bf16
        folders["optimum-intel-bf16"] = folders["optimum-intel"]
    return folders


def export(kind: str, how: list[str], model: Path, exported: Path, venvs: Path, commands: list[str]) -> Path:
    """``optimum-cli export <how>`` of ``model`` into ``exported`` with ``kind``'s environment,
    unless an earlier run exported this same model folder there."""
    cli = venvs / kind / "bin" / "optimum-cli"
    if not cli.exists():
        flag = " --openvino" if kind == "optimum-intel" else ""
        raise RuntimeError(f"{cli} is missing: run benchmarks/peers/setup.sh{flag} {venvs} first")
    stamp = exported / "peer-export.json"
    wanted = (model / "peer-model.json").read_text()
    command = [str(cli), "export", *how, "--model", str(model), "--task", "text-to-image", str(exported)]
    if not stamp.is_file() or stamp.read_text() != wanted:
        shutil.rmtree(exported, ignore_errors=True)
        run_step(command, f"{kind} export", commands)
        stamp.write_text(wanted)  # the model folder this export was made from
    else:
        commands.append(f"{shlex.join(command)}  # made by an earlier run for this model folder")
    return exported


def python_for(kind: str, venvs: Path) -> Path:
    """The worker's interpreter: the optimum peers' own environments, answer-trt's otherwise."""
    own = {"optimum": "optimum", "optimum-intel": "optimum-intel", "optimum-intel-bf16": "optimum-intel"}
    return venvs / own[kind] / "bin" / "python" if kind in own else Path(sys.executable)


def run_name(settings: Settings) -> str:
    """Names the JSON file and the README block: the model, plus a variant suffix."""
    return settings.model + settings.variant()


def worker_peer(kind: str, settings: Settings) -> str:
    """worker.py's --peer for a worker kind."""
    return "optimum-no-spinning" if kind == "optimum" and not settings.optimum_spinning else kind


def agreement(images: dict[str, list[Path]], results: dict[str, PeerResult]) -> None:
    """Max and mean absolute pixel difference (8-bit levels) of each peer's images
    against diffusers' images for the same prompts and seeds."""
    if REFERENCE not in images:
        return
    reference = [np.load(p).astype(np.int16) for p in images[REFERENCE]]
    for name, paths in images.items():
        diffs = [np.abs(np.load(p).astype(np.int16) - ref) for p, ref in zip(paths, reference)]
        results[name].max_abs_diff = int(max(d.max() for d in diffs))
        results[name].mean_abs_diff = float(np.mean([d.mean() for d in diffs]))


def benchmark(settings: Settings, folders: dict[str, Path], venvs: Path, work: Path) -> dict[str, Any]:
    """Start the workers (one at a time: loading full-size models together would peak
    memory), warm them up, run the alternating rounds and gather the results."""
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    kinds = list(dict.fromkeys(PEERS[p][0] for p in settings.peers))
    workers: dict[str, Worker] = {}
    try:
        for kind in kinds:
            print(f"[peers] starting the {kind} worker", flush=True)
            workers[kind] = Worker(kind, worker_peer(kind, settings), python_for(kind, venvs), folders[kind],
                                   settings.threads, logs / f"{settings.model}-{kind}.log")
        jobs = settings.jobs()
        warm = jobs[: settings.warmup] if settings.warmup <= len(jobs) else \
            [(harness.PROMPTS[0], settings.seed + i) for i in range(settings.warmup)]
        if warm:
            for peer in settings.peers:
                kind, method = PEERS[peer]
                print(f"[peers] warm-up: {peer}, {len(warm)} image(s)", flush=True)
                workers[kind].run(method, warm, settings, steps=settings.warmup_steps)
        results = {peer: PeerResult(peer) for peer in settings.peers}
        images: dict[str, list[Path]] = {}
        load_start = os.getloadavg()
        for round_, peer in harness.schedule(settings.peers, settings.rounds):
            kind, method = PEERS[peer]
            save = work / "images" / settings.model / peer.replace(" ", "-") if round_ == 0 else None
            reply = workers[kind].run(method, jobs, settings, save)
            results[peer].rounds.append([float(s) for s in reply["seconds"]])
            if save is not None:
                images[peer] = [Path(p) for p in reply["images"]]
            print(f"[peers] round {round_ + 1}/{settings.rounds} {peer}: median "
                  f"{float(np.median(reply['seconds'])):.3f} s per image", flush=True)
        agreement(images, results)
        return {"results": results, "workers": {k: w.info | {"command": shlex.join(w.command)}
                                                for k, w in workers.items()},
                "load_average": {"start": load_start, "end": os.getloadavg()}}
    finally:
        for worker in workers.values():
            worker.close()


def update_readme(readme: Path, model: str, table: str) -> None:
    """Replace the table between this model's markers in ``readme`` (markers must exist)."""
    start, end = README_START.format(model=model), README_END.format(model=model)
    text = readme.read_text()
    if start not in text or end not in text:
        raise RuntimeError(f"{readme} has no {start} ... {end} markers to put the table between")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{table}{end}{tail}")


def parse_args(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=sorted(harness.MODEL_DEFAULTS))
    parser.add_argument("--rounds", type=int, help="timed rounds (default: 3)")
    parser.add_argument("--images", type=int, help="images per peer per round (tiny 8, sd15-random 2)")
    parser.add_argument("--warmup", type=int, help="warm-up images per peer (tiny 2, sd15-random 1)")
    parser.add_argument("--warmup-steps", type=int, help="steps of each warm-up image (default: --steps)")
    parser.add_argument("--steps", type=int, help="DDIM steps (tiny 30, sd15-random 4)")
    parser.add_argument("--size", type=int, help="image side in pixels (tiny 32, sd15-random 256)")
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--threads", type=int, default=2, help="threads for every peer (torch and ORT intra-op)")
    parser.add_argument("--seed", type=int, default=0, help="seed of image 0 (image i uses seed + i)")
    parser.add_argument("--peers", default="all",
                        help="all (cfg,answer,optimum,diffusers), openvino (all and ov-cfg,ov-answer,optimum-intel,"
                             "optimum-intel-bf16), or a list of those short names")
    parser.add_argument("--work", type=Path, default=ROOT / ".peer-bench",
                        help="models, engines, exports, images and logs (default .peer-bench/)")
    parser.add_argument("--venvs", type=Path, default=ROOT / ".peer-venvs", help="setup.sh's folder")
    parser.add_argument("--json", type=Path, help="default benchmarks/results/peers-<model>.json")
    parser.add_argument("--build-args", default="",
                        help="extra `answer-trt build` arguments, as --build-args=\"--optimize\" "
                             "(engines go to their own folder)")
    parser.add_argument("--optimum-no-spinning", action="store_true",
                        help="turn ONNX Runtime's spin-waiting off in optimum's sessions, as answer-trt does")
    parser.add_argument("--update-readme", action="store_true",
                        help="put the table into benchmarks/README.md between this model's markers")
    args = parser.parse_args(argv)
    defaults = harness.MODEL_DEFAULTS[args.model]
    pick = {name: getattr(args, name) if getattr(args, name) is not None else defaults[name]
            for name in ("size", "steps", "rounds", "images", "warmup")}
    settings = Settings(model=args.model, guidance_scale=args.guidance_scale, threads=args.threads, seed=args.seed,
                        warmup_steps=args.warmup_steps,
                        peers=harness.parse_peers(args.peers), optimum_spinning=not args.optimum_no_spinning,
                        build_args=tuple(shlex.split(args.build_args)), **pick)
    return settings, args


def main(argv: list[str] | None = None) -> int:
    try:
        settings, args = parse_args(argv)
        out = args.json or ROOT / "benchmarks" / "results" / f"peers-{run_name(settings)}.json"
        if not out.parent.is_dir():
            raise SettingsError(f"--json {out}: its folder does not exist")
        commands = [shlex.join([sys.executable, *sys.argv])]
        started = time.time()
        folders = prepare(settings, args.work, args.venvs, commands)
        run = benchmark(settings, folders, args.venvs, args.work)
    except (SettingsError, RuntimeError) as exc:
        print(f"peers: {exc}", file=sys.stderr)
        return 2
    results: dict[str, PeerResult] = run["results"]
    table = harness.markdown_table(results, settings)
    print("\n" + table)
    report = {
        "settings": {**settings.__dict__, "peers": list(settings.peers), "build_args": list(settings.build_args),
                     "prompts": list(harness.PROMPTS),
                     "scheduler": "DDIM (the model folder's config)", "jobs": settings.jobs()},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "processor": platform.processor(),
                    "load_average": run["load_average"]},
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": time.time() - started,
        "commands": commands,
        "workers": run["workers"],
        **harness.summary_json(results, settings),
        "table": table,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"[peers] wrote {out}")
    if args.update_readme:
        try:
            update_readme(ROOT / "benchmarks" / "README.md", run_name(settings), table)
        except RuntimeError as exc:
            print(f"peers: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
