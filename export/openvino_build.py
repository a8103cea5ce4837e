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
and called alternately, a full-size one compiled with one at a time. A full-size UNet keeps
OpenVINO's own choice unless a candidate is clearly faster; a small one runs on one thread
unless that is clearly slower (``pick_threads``: measured inside the sampler, where calls
back to back had hidden it).
"""

from __future__ import annotations

import gc
import os
import statistics
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

ROUNDS = 15  # timed calls per candidate of a small UNet, alternating, after one warm-up each


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
    model (``pick_threads``), then, at that count, a static-shape model against the dynamic one,
    which wins only when ``CLEARLY_FASTER``."""
    binding = check_binding(unet.profile)
    binding["batch"] = min(2, unet.profile["batch"][2])
    inputs = dict(feed(unet.spec, binding))
    path = staging / unet.file
    small = path.with_suffix(".bin").stat().st_size < SMALL_GRAPH_BYTES
    best = _measure(path, hint, inputs, {str(t): (t, False) for t in CANDIDATES}, small)
    chosen = pick_threads({t: best[str(t)] for t in CANDIDATES}, small)
    shapes = _measure(path, hint, inputs, {"dynamic": (chosen, False), "static": (chosen, True)}, small)
    dynamic = min(shapes["dynamic"], best[str(chosen)])  # the dynamic model's better measurement
    static = shapes["static"] < dynamic * CLEARLY_FASTER
    best["static"] = shapes["static"]
    shown = ", ".join(f"{'default' if t == str(DEFAULT_THREADS) else t} {ms:.2f} ms" for t, ms in best.items())
    log(f"openvino: inference threads {'default' if chosen == DEFAULT_THREADS else chosen}, "
        f"{'static' if static else 'dynamic'} shapes ({'median' if small else 'fastest'} UNet call at batch "
        f"{binding['batch']}, {hint}: {shown}; "
        f"dynamic at the chosen threads again {shapes['dynamic']:.2f} ms)")
    return SessionChoice(intra_op_threads=chosen, unet_call_ms={k: round(ms, 3) for k, ms in best.items()},
                         cpus=os.cpu_count(), static_shapes=static)


def pick_threads(call_ms: dict[int, float], small: bool) -> int:
    """The thread count to compile with from the fastest call (ms) per candidate (``0``:
    OpenVINO's own choice, one per core). A large UNet keeps OpenVINO's choice unless a
    candidate is ``CLEARLY_FASTER``. A small one (``SMALL_GRAPH_BYTES``) takes one thread
    unless that is clearly slower: its calls last milliseconds, and inside the sampler, where
    torch's work and other processes come between calls, OpenVINO's second thread costs more
    than it gives (``tiny`` on 2 shared cores: 7.9 ms per UNet call on 1 thread against 12.7
    ms on 2, images 1.6x faster, where calls back to back timed them level; benchmarks/README.md)."""
    if small and 1 in call_ms and not call_ms[DEFAULT_THREADS] < call_ms[1] * CLEARLY_FASTER:
        return 1
    chosen = min(call_ms, key=call_ms.__getitem__)
    return chosen if call_ms[chosen] < call_ms[DEFAULT_THREADS] * CLEARLY_FASTER else DEFAULT_THREADS


Variants = dict[str, tuple[int, bool]]  # label -> (threads, static shapes)


def _measure(path: Path, hint: str, inputs: dict[str, Any], variants: Variants, small: bool) -> dict[str, float]:
    """The call time (ms) per variant: a small model's variants compiled together and called
    alternately (``ROUNDS``), the median call (an image is the sum of its calls, so the typical
    call counts, not the luckiest: on shared cores a second thread's lucky calls hide its
    stalls); a large one's one at a time, the fastest of ``LARGE_CALLS``."""
    if small:  # all at once, calls alternating: all see the same disturbances
        requests = _requests(path, hint, inputs, variants)
        for request in requests.values():
            request.infer(inputs)  # warm-up
        times: dict[str, list[float]] = {label: [] for label in variants}
        labels = list(variants)
        for round_ in range(ROUNDS):
            for label in labels if round_ % 2 == 0 else labels[::-1]:
                times[label].append(_timed(requests[label], inputs))
        return {label: statistics.median(ms) for label, ms in times.items()}
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
