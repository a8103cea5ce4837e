"""Seconds per image of one engines folder under several ONNX Runtime session settings,
in alternating processes (the machine's cores are shared, so only ratios within one
run mean anything).

    python -m benchmarks.session_options --engines /tmp/perf-engines --rounds 5

Each variant is one ``SessionSettings`` (answer_trt/backends/ort.py) and runs in its own
process (sessions of several variants in one process disturb each other: a spinning
thread pool slows every other session down). A round starts one process per variant, in
a rotated order; each times ``--images`` CFG and ANSWER generations (the defaults: 30
DDIM steps, the built size, batch 1) after a warm-up and reports the fastest (the one
least disturbed by other processes). Prints the median over rounds and its ratio to the
first variant. ``--compare`` names a second
engines folder (e.g. one built with ``--optimize``) to run with the default settings as
one more variant.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from answer_trt.backends.ort import SessionSettings

VARIANTS = {
    "default": SessionSettings(),  # ORT threads, no spinning, memory patterns, ORT_ENABLE_ALL, sequential
    "intra 2": SessionSettings(intra_op_threads=2),
    "intra 1": SessionSettings(intra_op_threads=1),
    "spinning on": SessionSettings(allow_spinning=True),
    "mem pattern off": SessionSettings(mem_pattern=False),
    "graph EXTENDED": SessionSettings(graph_level="extended"),
    "parallel, inter 2": SessionSettings(execution_mode="parallel", inter_op_threads=2),
}
METHODS = ("cfg", "answer")


def measure(engines: Path, variant: str, images: int, steps: int) -> dict[str, float]:
    """The fastest of ``images`` seconds per image of each method, in this process."""
    from answer_trt.loaders import from_engines

    pipe = from_engines(engines, session=VARIANTS.get(variant, SessionSettings()))
    result = {}
    for method in METHODS:
        pipe.generate("a red circle and a blue square", method=method, steps=2)  # warm-up
        times = []
        for seed in range(images):
            started = time.perf_counter()
            pipe.generate("a red circle and a blue square", method=method, steps=steps, seed=seed)
            times.append(time.perf_counter() - started)
        result[method] = min(times)  # the least disturbed by the other processes on the cores
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--compare", type=Path, help="a second engines folder, run with the default settings")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=5, help="generations per method and process")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--only", help="comma-separated variant names (default: all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one variant's measurement, as JSON
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.engines, args.child, args.images, args.steps)))
        return 0

    runs = [(n, args.engines) for n in VARIANTS if args.only is None or n in args.only.split(",")]
    if args.compare is not None:
        runs.append((f"{args.compare.name} (default settings)", args.compare))
    times: dict[str, dict[str, list[float]]] = {name: {m: [] for m in METHODS} for name, _ in runs}
    for round_ in range(args.rounds):
        for name, folder in runs[round_ % len(runs):] + runs[: round_ % len(runs)]:
            command = [sys.executable, "-m", "benchmarks.session_options", "--engines", str(folder), "--child", name,
                       "--images", str(args.images), "--steps", str(args.steps)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            for method, value in json.loads(out.strip().splitlines()[-1]).items():
                times[name][method].append(value)
    first = runs[0][0]
    print(f"{'variant':<52} " + " ".join(f"{m + ' s/img':>13} {'ratio':>6}" for m in METHODS))
    for name, _ in runs:
        cells = []
        for method in METHODS:
            median = statistics.median(times[name][method])
            cells.append(f"{median:>13.3f} {median / statistics.median(times[first][method]):>6.2f}")
        print(f"{name:<52} " + " ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
