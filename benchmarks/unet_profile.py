"""Where one UNet call's time goes, per ONNX operator type (ONNX Runtime's profiler, CPU).

    python benchmarks/unet_profile.py ENGINES_DIR [--batch 2] [--latent 32] [--calls 3] [--threads 0]

Runs the engines folder's UNet ``--calls`` times on seeded inputs shaped by its IO spec
and prints, for the last call, each operator type's node count, milliseconds and share
of the kernel time. Session options are the runtime's (``SessionSettings``).
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import onnxruntime as ort

from answer_trt.backends.ort import SessionSettings
from answer_trt.export.sample_inputs import sample_inputs
from answer_trt.iospec import UNET
from answer_trt.manifest import read_manifest


def profile(folder: Path, batch: int, latent: int, calls: int, threads: int) -> list[tuple[str, int, float]]:
    """``[(op type, nodes, ms)]`` of the last of ``calls`` calls, slowest first."""
    manifest = read_manifest(folder)
    entry = manifest.components[UNET]
    factor = manifest.info.dims.vae_scale_factor
    binding = manifest.info.dims.bind(batch, latent * factor, latent * factor)
    feeds = {name: tensor.numpy() for name, tensor in sample_inputs(entry.spec, binding).items()}
    options = SessionSettings(intra_op_threads=threads).options()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "unet")
    session = ort.InferenceSession(str(folder / entry.file), options, providers=["CPUExecutionProvider"])
    for _ in range(calls):
        started = time.perf_counter()
        session.run(None, feeds)
        print(f"call: {(time.perf_counter() - started) * 1e3:.1f} ms")
    events = json.loads(Path(session.end_profiling()).read_text())
    last = [e for e in events if e.get("name") == "model_run"][-1]
    begin, end = last["ts"], last["ts"] + last["dur"]
    micros: collections.Counter[str] = collections.Counter()
    nodes: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and begin <= event["ts"] <= end:
            op = event["args"].get("op_name", "?")
            micros[op] += event["dur"]
            nodes[op] += 1
    return [(op, nodes[op], us / 1e3) for op, us in micros.most_common()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engines", type=Path)
    parser.add_argument("--batch", type=int, default=2, help="rows (default 2: one CFG call)")
    parser.add_argument("--latent", type=int, default=32, help="latent side (default 32: 256 px on SD)")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ONNX Runtime's choice)")
    args = parser.parse_args()
    rows = profile(args.engines, args.batch, args.latent, args.calls, args.threads)
    total = sum(ms for _, _, ms in rows)
    print("| op type | nodes | ms | share |\n| --- | ---: | ---: | ---: |")
    for op, count, ms in rows[:15]:
        print(f"| {op} | {count} | {ms:.1f} | {100 * ms / total:.1f}% |")


if __name__ == "__main__":
    main()
