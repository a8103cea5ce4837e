"""Exported ONNX component -> OpenVINO IR (``<component>.xml`` + ``<component>.bin``), and
the thread count its UNet runs fastest with on this machine.

OpenVINO's ONNX frontend reads the graph (and its external data) through ``Core.read_model``,
the same frontend ``openvino.convert_model`` uses for an ONNX file, without the conversion
tool's telemetry (``convert_model`` sends usage events to Intel where no consent file says
otherwise); ``openvino.save_model`` writes the IR with float32 weights
(``compress_to_fp16=False``: its default would halve the weights to fp16). The ONNX files
are then removed from the staging folder: the IR is self-contained. The conversion knows nothing of which component it
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
    model = core().read_model(str(onnx_path))  # the ONNX frontend, as convert_model (without its telemetry)
    xml = onnx_path.with_suffix(".xml")
    ov.save_model(model, str(xml), compress_to_fp16=False)
    del model
    gc.collect()
    for path in (onnx_path, onnx_path.parent / external_data_name(onnx_path.name)):
        path.unlink(missing_ok=True)
    return xml.name


def choose_threads(staging: Path, unet: ComponentEntry, hint: str, log: Callable[[str], None]) -> SessionChoice:
    """``INFERENCE_NUM_THREADS`` for ``unet`` (its IR in ``staging``, compiled with ``hint``) and
    its shape policy: first the fastest of ``CANDIDATES`` thread counts on the dynamic-shape
    model, then, at that count, a static-shape model against the dynamic one; a challenger wins
    only when ``CLEARLY_FASTER``."""
    binding = check_binding(unet.profile)
    binding["batch"] = min(2, unet.profile["batch"][2])
    inputs = dict(feed(unet.spec, binding))
    path = staging / unet.file
    small = path.with_suffix(".bin").stat().st_size < SMALL_GRAPH_BYTES
    best = _measure(path, hint, inputs, {str(t): (t, False) for t in CANDIDATES}, small)
    chosen = min(CANDIDATES, key=lambda t: best[str(t)])
    if best[str(chosen)] >= best[str(DEFAULT_THREADS)] * CLEARLY_FASTER:
        chosen = DEFAULT_THREADS
    shapes = _measure(path, hint, inputs, {"dynamic": (chosen, False), "static": (chosen, True)}, small)
    dynamic = min(shapes["dynamic"], best[str(chosen)])  # the fastest dynamic call seen at those threads
    static = shapes["static"] < dynamic * CLEARLY_FASTER
    best["static"] = shapes["static"]
    shown = ", ".join(f"{'default' if t == str(DEFAULT_THREADS) else t} {ms:.2f} ms" for t, ms in best.items())
    log(f"openvino: inference threads {'default' if chosen == DEFAULT_THREADS else chosen}, "
        f"{'static' if static else 'dynamic'} shapes (fastest UNet call at batch {binding['batch']}, {hint}: {shown}; "
        f"dynamic at the chosen threads again {shapes['dynamic']:.2f} ms)")
    return SessionChoice(intra_op_threads=chosen, unet_call_ms={k: round(ms, 3) for k, ms in best.items()},
                         cpus=os.cpu_count(), static_shapes=static)


Variants = dict[str, tuple[int, bool]]  # label -> (threads, static shapes)


def _measure(path: Path, hint: str, inputs: dict[str, Any], variants: Variants, small: bool) -> dict[str, float]:
    """The fastest call (ms) per variant: a small model's variants compiled together and
    called alternately (``ROUNDS``), a large one's one at a time (``LARGE_CALLS``)."""
    if small:  # all at once, calls alternating: all see the same disturbances
        requests = _requests(path, hint, inputs, variants)
        for request in requests.values():
            request.infer(inputs)  # warm-up
        best = {label: float("inf") for label in variants}
        labels = list(variants)
        for round_ in range(ROUNDS):
            for label in labels if round_ % 2 == 0 else labels[::-1]:
                best[label] = min(best[label], _timed(requests[label], inputs))
        return best
    best = {}
    for label, variant in variants.items():  # one compiled model at a time: a full-size UNet is GBs
        request = _requests(path, hint, inputs, {label: variant})[label]
        request.infer(inputs)  # warm-up
        best[label] = min(_timed(request, inputs) for _ in range(LARGE_CALLS))
        del request
        gc.collect()
    return best


def _requests(path: Path, hint: str, inputs: dict[str, Any], variants: Variants) -> dict[str, Any]:
    """One infer request per variant, its model compiled with its threads, reshaped to the
    shapes of ``inputs`` where it is static."""
    model = core().read_model(str(path))
    requests = {}
    for label, (threads, static) in variants.items():
        variant = model
        if static:
            variant = model.clone()
            variant.reshape({name: list(value.shape) for name, value in inputs.items()})
        requests[label] = core().compile_model(variant, DEVICE, compile_config(hint, threads)).create_infer_request()
    return requests


def _timed(request: Any, inputs: dict[str, object]) -> float:
    started = time.perf_counter()
    request.infer(inputs)
    return (time.perf_counter() - started) * 1e3
