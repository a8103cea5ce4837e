"""Exported ONNX component -> OpenVINO IR (``<component>.xml`` + ``<component>.bin``), and
the thread count its UNet runs fastest with on this machine.

``openvino.convert_model`` reads the ONNX graph (and its external data), and
``openvino.save_model`` writes the IR with float32 weights (``compress_to_fp16=False``: its
default would halve the weights to fp16). The ONNX files are then removed from the staging
folder: the IR is self-contained. The conversion knows nothing of which component it
converts, so any component the export stage writes is converted the same way.

The precision is not in the IR: the runtime compiles it with ``INFERENCE_PRECISION_HINT``
(``answer_trt.backends.openvino``). The thread count is measured like ONNX Runtime's
(``answer_trt.export.session_tune``): the fused CFG UNet call (batch 2, or 1 where the profile
allows no more) at the built opt size under each candidate: a small UNet compiled with both
and called alternately, a full-size one compiled with one at a time; a candidate replaces
OpenVINO's own choice only when clearly faster.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from answer_trt.backends.openvino import (
    DEVICE,
    compile_config,
    core,
    openvino_version,
    require_openvino,
)
from answer_trt.export.accuracy import check_binding, feed
from answer_trt.export.session_tune import (
    CANDIDATES,
    CLEARLY_FASTER,
    DEFAULT_THREADS,
    LARGE_CALLS,
    SMALL_GRAPH_BYTES,
)
from answer_trt.manifest import ComponentEntry, SessionChoice, external_data_name

ROUNDS = 5  # timed calls per candidate, alternating, after one warm-up each


def convert_component(onnx_path: Path, log: Callable[[str], None]) -> str:
    """Write ``<name>.xml`` and ``<name>.bin`` beside ``onnx_path`` and remove the ONNX graph
    and its external data; returns the ``.xml`` file's name."""
    ov = require_openvino()
    log(f"converting {onnx_path.stem} to OpenVINO IR (openvino {openvino_version()})")
    model = ov.convert_model(str(onnx_path))
    xml = onnx_path.with_suffix(".xml")
    ov.save_model(model, str(xml), compress_to_fp16=False)
    del model
    gc.collect()
    for path in (onnx_path, onnx_path.parent / external_data_name(onnx_path.name)):
        path.unlink(missing_ok=True)
    return xml.name


def choose_threads(staging: Path, unet: ComponentEntry, hint: str, log: Callable[[str], None]) -> SessionChoice:
    """``INFERENCE_NUM_THREADS`` for ``unet`` (its IR in ``staging``, compiled with ``hint``):
    the fastest of ``CANDIDATES`` by the fastest of ``ROUNDS`` alternating calls."""
    binding = check_binding(unet.profile)
    binding["batch"] = min(2, unet.profile["batch"][2])
    inputs = dict(feed(unet.spec, binding))
    path = staging / unet.file
    if path.with_suffix(".bin").stat().st_size < SMALL_GRAPH_BYTES:  # both at once, calls alternating
        best = _alternating(path, hint, inputs)
    else:  # one compiled model at a time: a full-size UNet is GBs
        best = {threads: _fastest_block(path, hint, threads, inputs) for threads in CANDIDATES}
    chosen = min(CANDIDATES, key=lambda t: best[t])
    if best[chosen] >= best[DEFAULT_THREADS] * CLEARLY_FASTER:
        chosen = DEFAULT_THREADS
    shown = ", ".join(f"{'default' if t == DEFAULT_THREADS else t} {ms:.2f} ms" for t, ms in best.items())
    log(f"openvino: inference threads {'default' if chosen == DEFAULT_THREADS else chosen} (fastest UNet call at "
        f"batch {binding['batch']}, {hint}: {shown})")
    return SessionChoice(intra_op_threads=chosen, unet_call_ms={str(t): round(ms, 3) for t, ms in best.items()},
                         cpus=os.cpu_count())


def _requests(path: Path, hint: str, threads: tuple[int, ...]) -> dict[int, Any]:
    model = core().read_model(str(path))
    return {t: core().compile_model(model, DEVICE, compile_config(hint, t)).create_infer_request() for t in threads}


def _alternating(path: Path, hint: str, inputs: dict[str, object]) -> dict[int, float]:
    """The fastest of ``ROUNDS`` alternating calls (ms) per candidate."""
    requests = _requests(path, hint, CANDIDATES)
    for request in requests.values():
        request.infer(inputs)  # warm-up
    best = {threads: float("inf") for threads in CANDIDATES}
    for round_ in range(ROUNDS):
        for threads in CANDIDATES if round_ % 2 == 0 else CANDIDATES[::-1]:
            best[threads] = min(best[threads], _timed(requests[threads], inputs))
    return best


def _fastest_block(path: Path, hint: str, threads: int, inputs: dict[str, object]) -> float:
    """The fastest of ``LARGE_CALLS`` calls (ms) of a model compiled alone with ``threads``."""
    request = _requests(path, hint, (threads,))[threads]
    request.infer(inputs)  # warm-up
    fastest = min(_timed(request, inputs) for _ in range(LARGE_CALLS))
    del request
    gc.collect()
    return fastest


def _timed(request: Any, inputs: dict[str, object]) -> float:
    started = time.perf_counter()
    request.infer(inputs)
    return (time.perf_counter() - started) * 1e3
