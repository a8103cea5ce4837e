"""ONNX Runtime's intra-op thread count for an engines folder, chosen at build time by
measuring the built UNet on this machine (CPU provider only), and recorded in the manifest.

On the 2-core development machine, shared with other work, one intra-op thread was
faster than ONNX Runtime's default of one per physical core: 15-19% per image on `tiny`
(CFG and ANSWER, 30 steps) and 6% per UNet call on the SD-1.5 UNet at 256 px
(benchmarks/README.md, "CPU: graph optimization and session options"); on a machine
with idle cores the default should win. So the build measures: the fused CFG call
(batch 2, or 1 where the profile allows no more) at the built opt size, under each
candidate, in alternating calls (a small UNet) or one after the other (a full-size one,
one session in memory at a time); a candidate replaces the default only when it is
clearly faster (``CLEARLY_FASTER``). The other session options were measured once and
fixed in ``SessionSettings``'s defaults (no spinning, memory patterns on, ORT_ENABLE_ALL,
sequential execution).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from answer_trt.export.accuracy import check_binding, feed
from answer_trt.manifest import ComponentEntry, SessionChoice, external_data_name

DEFAULT_THREADS = 0  # ONNX Runtime's own choice: one per physical core
CANDIDATES = (DEFAULT_THREADS, 1)
CLEARLY_FASTER = 0.95  # a candidate must take under 95% of the default's time to replace it
SMALL_GRAPH_BYTES = 256 << 20  # below this, both sessions at once and SMALL_ROUNDS alternating calls
SMALL_ROUNDS = 15
LARGE_CALLS = 3  # above it, one session at a time: LARGE_CALLS timed calls each after a warm-up


def choose_session(staging: Path, unet: ComponentEntry, log: Callable[[str], None]) -> SessionChoice | None:
    """The intra-op thread count for ``unet`` (in ``staging``), or None where the CUDA
    provider would run it (the CPU thread count does not decide its speed)."""
    from answer_trt.backends.ort import default_providers

    if default_providers()[0] != "CPUExecutionProvider":
        return None
    path = staging / unet.file
    size = path.stat().st_size + sum(p.stat().st_size for p in [path.parent / external_data_name(path.name)]
                                     if p.exists())
    binding = check_binding(unet.profile)
    binding["batch"] = min(2, unet.profile["batch"][2])
    inputs = dict(feed(unet.spec, binding))
    if size < SMALL_GRAPH_BYTES:  # both sessions at once, calls alternating: both see the same disturbances
        best = _alternating(path, inputs, unet.spec.output_names)
    else:  # one session at a time: a full-size UNet is GBs
        best = {threads: _fastest_block(path, threads, inputs, unet.spec.output_names) for threads in CANDIDATES}
    chosen = min(CANDIDATES, key=lambda t: best[t])
    if best[chosen] >= best[DEFAULT_THREADS] * CLEARLY_FASTER:
        chosen = DEFAULT_THREADS
    timings = {str(t): round(ms, 3) for t, ms in best.items()}
    shown = ", ".join(f"{_label(t)} {ms:.2f} ms" for t, ms in best.items())
    log(f"session: intra-op threads {_label(chosen)} (fastest UNet call at batch {binding['batch']}: {shown})")
    return SessionChoice(intra_op_threads=chosen, unet_call_ms=timings, cpus=os.cpu_count())


def _label(threads: int) -> str:
    return "default" if threads == DEFAULT_THREADS else str(threads)


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    from answer_trt.backends.ort import SessionSettings

    return ort.InferenceSession(str(path), SessionSettings(intra_op_threads=threads).options(),
                                providers=["CPUExecutionProvider"])


def _timed(session: Any, inputs: dict[str, object], outputs: Sequence[str]) -> float:
    started = time.perf_counter()
    session.run(outputs, inputs)
    return (time.perf_counter() - started) * 1e3


def _alternating(path: Path, inputs: dict[str, object], outputs: Sequence[str]) -> dict[int, float]:
    """The fastest of ``SMALL_ROUNDS`` alternating calls (ms) per candidate."""
    sessions = {threads: _session(path, threads) for threads in CANDIDATES}
    for session in sessions.values():
        session.run(outputs, inputs)  # warm-up: first-call allocations
    best = {threads: float("inf") for threads in CANDIDATES}
    for round_ in range(SMALL_ROUNDS):
        order = CANDIDATES if round_ % 2 == 0 else CANDIDATES[::-1]
        for threads in order:
            best[threads] = min(best[threads], _timed(sessions[threads], inputs, outputs))
    return best


def _fastest_block(path: Path, threads: int, inputs: dict[str, object], outputs: Sequence[str]) -> float:
    """The fastest of ``LARGE_CALLS`` calls (ms) of a fresh session with ``threads`` threads."""
    session = _session(path, threads)
    session.run(outputs, inputs)  # warm-up
    fastest = min(_timed(session, inputs, outputs) for _ in range(LARGE_CALLS))
    del session
    gc.collect()  # one session's memory at a time
    return fastest
