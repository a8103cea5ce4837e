"""`answer-trt build --optimize`: ONNX Runtime's transformer optimizer
(``onnxruntime.transformers.optimizer``) on each exported ONNX Runtime graph, kept only
where it helps and changes nothing.

Per component (model type ``clip`` for text encoders, ``unet``, ``vae`` for the decoder):
the optimizer's fusions (attention, LayerNorm/SkipLayerNorm, Gelu family) after ONNX
Runtime's provider-independent basic level (constant folding, redundant nodes). The
fusions into operators that ONNX Runtime implements only on CUDA (GroupNorm,
SkipGroupNorm, NhwcConv, BiasSplitGelu, BiasAdd, packed QKV/KV attention) are off
unless the CUDA provider is present, and nothing is converted to fp16: the graph keeps
the dtypes it was exported in. The result replaces the exported graph only if

- at least one fusion fired (else the graph is the same program),
- it loads in ONNX Runtime with exactly the IO spec's tensors,
- it matches the UNOPTIMIZED graph on the IO spec's seeded sample inputs at the check
  size within the accuracy check's tolerances (``answer_trt.export.accuracy.TOLERANCES``: element-wise,
  absolute or relative error), and
- it is not slower: the fastest of a few alternating calls of each graph.

What happened to each component (fusions, errors, timings, or why it was not kept) goes
into the manifest's ``graph_optimization`` and the build log; a failure of the optimizer
itself keeps the exported graph and is recorded, it never fails the build.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from answer_trt.export.accuracy import TOLERANCES, Tolerance, arithmetic_precision, check_binding, feed
from answer_trt.iospec import TEXT_ENCODER, UNET, VAE_DECODER, VAE_ENCODER, ComponentSpec
from answer_trt.manifest import ComponentEntry, GraphOptimization, GraphOptimizationEntry, external_data_name

# SDXL: both text encoders in one graph.
MODEL_TYPES = {TEXT_ENCODER: "clip", UNET: "unet", VAE_DECODER: "vae", VAE_ENCODER: "vae"}
# FusionOptions switches for fusions into CUDA-only contrib operators.
CUDA_ONLY_FUSIONS = ("enable_group_norm", "enable_skip_group_norm", "enable_nhwc_conv", "enable_bias_splitgelu",
                     "enable_bias_add", "enable_packed_qkv", "enable_packed_kv")
OPT_LEVEL = 1  # ONNX Runtime's basic, provider-independent level; the session adds the rest at load
TIMING_ROUNDS = 5
NOT_SLOWER = 1.02  # the optimized graph's fastest call may be 2% slower (timer noise) and still count


def optimizer_tool() -> str:
    import onnxruntime

    return f"onnxruntime.transformers.optimizer {onnxruntime.__version__}"


def optimize_components(staging: Path, components: Mapping[str, ComponentEntry],
                        log: Callable[[str], None]) -> GraphOptimization:
    """Optimize every ONNX component in ``staging`` in place (see the module docstring)."""
    results = {}
    for name, entry in components.items():
        if not entry.file.endswith(".onnx"):
            continue
        result = optimize_component(staging / entry.file, entry, MODEL_TYPES.get(name, name))
        fused = ", ".join(f"{op} {n}" for op, n in sorted(result.fusions.items())) or "no fusions"
        log(f"graph optimization {name}: {'kept' if result.kept else 'not kept'} ({result.note}; {fused})")
        results[name] = result
    return GraphOptimization(optimizer_tool(), results)


def optimize_component(path: Path, entry: ComponentEntry, model_type: str) -> GraphOptimizationEntry:
    """Optimize the graph at ``path``; it is replaced only when the result is kept."""
    with tempfile.TemporaryDirectory(prefix=".optimize-", dir=path.parent) as work:
        candidate = Path(work) / path.name  # the same name: its external data keeps the name rule
        try:
            fusions = run_optimizer(path, candidate, model_type)
        except Exception as exc:  # noqa: BLE001 - the optimizer's own failure: keep the exported graph
            return GraphOptimizationEntry(False, f"optimizer failed: {type(exc).__name__}: {_line(exc)}", {})
        if not fusions:
            return GraphOptimizationEntry(False, "no fusion applies", {})
        compared = compare_graphs(path, candidate, entry)
        if isinstance(compared, str):
            return GraphOptimizationEntry(False, compared, fusions)
        (abs_err, rel_err, passed, tolerance), (base_ms, new_ms) = compared
        numbers = dict(max_abs_error=abs_err, max_rel_error=rel_err, atol=tolerance.atol, rtol=tolerance.rtol,
                       exported_ms=base_ms, optimized_ms=new_ms)
        if not passed:
            return GraphOptimizationEntry(False, "differs from the exported graph beyond the tolerance", fusions,
                                          **numbers)
        if new_ms > base_ms * NOT_SLOWER:
            return GraphOptimizationEntry(False, "slower than the exported graph", fusions, **numbers)
        _replace(candidate, path)
        return GraphOptimizationEntry(True, "fused, equal within tolerance, not slower", fusions, **numbers)


def run_optimizer(source: Path, out: Path, model_type: str) -> dict[str, int]:
    """Run the optimizer on ``source`` and save the result to ``out`` (external data beside
    it when the source has some); returns the fused operators that fired."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from answer_trt.backends.ort import default_providers

    on_cuda = "CUDAExecutionProvider" in default_providers()
    options = FusionOptions(model_type)
    if not on_cuda:
        for switch in CUDA_ONLY_FUSIONS:
            setattr(options, switch, False)
    external = (source.parent / external_data_name(source.name)).exists()
    with _quiet():
        model = optimize_model(str(source), model_type=model_type, num_heads=0, hidden_size=0,
                               optimization_options=options, opt_level=OPT_LEVEL, use_gpu=on_cuda,
                               only_onnxruntime=False)
        model.save_model_to_file(str(out), use_external_data_format=external)
        stats = model.get_fused_operator_statistics()
    return {str(op): int(n) for op, n in sorted(stats.items()) if n}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The optimizer's INFO log lines and its tqdm progress bar are not ours to show: the
    build logs one line per component instead."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # tqdm writes to sys.stderr as it is at the call
            yield
    finally:
        logging.disable(previous)


def compare_graphs(
    exported: Path, optimized: Path, entry: ComponentEntry
) -> str | tuple[tuple[float, float, bool, Tolerance], tuple[float, float]]:
    """Errors of ``optimized`` against ``exported`` on the sample inputs, and the fastest
    call of each (ms); or a one-line reason why the optimized graph cannot be used."""
    from answer_trt.backends.ort import SessionSettings, check_graph_matches_spec, default_providers
    from answer_trt.errors import UserInputError

    spec: ComponentSpec = entry.spec
    try:
        sessions = [_session(p, SessionSettings(), default_providers()) for p in (exported, optimized)]
        check_graph_matches_spec(sessions[1], spec, optimized, "answer-trt build --no-optimize")
    except UserInputError:
        return "its inputs or outputs differ from the IO spec"
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime refuses the graph
        return f"does not load in ONNX Runtime: {type(exc).__name__}: {_line(exc)}"
    binding = check_binding(entry.profile)
    inputs = dict(feed(spec, binding))
    outputs = [session.run(spec.output_names, inputs) for session in sessions]
    precision = arithmetic_precision("onnxruntime", "", spec)
    tolerance = TOLERANCES[precision].get(spec.name, TOLERANCES[precision][UNET])
    abs_err, rel_err, passed = 0.0, 0.0, True
    for want, got in zip(*outputs):
        want64, got64 = np.asarray(want, np.float64), np.asarray(got, np.float64)
        absdiff = np.abs(got64 - want64)
        reldiff = absdiff / np.maximum(np.abs(want64), np.finfo(np.float64).tiny)
        abs_err, rel_err = max(abs_err, float(absdiff.max())), max(rel_err, float(reldiff.max()))
        passed = passed and bool(np.all((absdiff <= tolerance.atol) | (reldiff <= tolerance.rtol)))
    best = [float("inf"), float("inf")]
    for _ in range(TIMING_ROUNDS):  # alternating, so both see the same disturbances
        for i, session in enumerate(sessions):
            started = time.perf_counter()
            session.run(spec.output_names, inputs)
            best[i] = min(best[i], (time.perf_counter() - started) * 1e3)
    return (abs_err, rel_err, passed, tolerance), (best[0], best[1])


def _session(path: Path, settings: Any, providers: list[str]) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), settings.options(), providers=providers)


def _replace(candidate: Path, path: Path) -> None:
    """Move the optimized graph (and its external data, if any) over the exported one."""
    data, old_data = candidate.parent / external_data_name(candidate.name), path.parent / external_data_name(path.name)
    if data.exists():
        os.replace(data, old_data)
    elif old_data.exists():
        old_data.unlink()
    shutil.move(str(candidate), str(path))


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""
