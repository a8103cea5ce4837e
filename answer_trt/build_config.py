"""What ``answer-trt build`` is asked for: a frozen, validated request, and the command
line that replays it.

It lives in the runtime so that the CLI and the loaders can make one without loading
the export stage, and so that every rebuild hint (manifest, loaders, shape checks,
TensorRT plan mismatch) is rendered by one ``command()`` from what a folder was built
with (``Manifest.build_config``). It imports no manifest: the manifest imports it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from answer_trt.errors import UserInputError
from answer_trt.iospec import SizeRange
from answer_trt.rules import (
    BF16_BACKENDS,
    BUILD_BACKENDS,
    DEFAULT_MAX_BATCH,
    DEFAULT_PRECISION,
    PRECISIONS,
    check_choice,
    check_int,
    check_size,
    check_size_range,
    check_variant,
)


@dataclass(frozen=True)
class BuildConfig:
    """One ``answer-trt build`` request, validated on construction (``UserInputError``)."""

    model: str = "tiny"
    out: Path = Path("engines/tiny")
    backend: str = "onnxruntime"
    precision: str | None = None  # None: DEFAULT_PRECISION of the backend
    max_batch: int = DEFAULT_MAX_BATCH
    height: SizeRange | int | None = None  # None: the model's default size
    width: SizeRange | int | None = None
    force: bool = False
    check: bool | None = None  # the post-build accuracy check; None: on for fp16 and bf16, off for fp32
    # Build-time graph optimization (export/graph_optimize.py), onnxruntime only; None: off
    # (measured: no gain on the CPU, benchmarks/README.md).
    optimize: bool | None = None
    # The model's weights variant (`fp16` for unet/diffusion_pytorch_model.fp16.safetensors);
    # None: the plain weights, or the one variant a folder holds them as (models/weight_files.py).
    variant: str | None = None

    def __post_init__(self) -> None:
        check_choice("backend", self.backend, BUILD_BACKENDS)
        if self.precision is None:
            object.__setattr__(self, "precision", DEFAULT_PRECISION[self.backend])
        check_choice("precision", self.precision, PRECISIONS)
        if self.precision == "bf16" and self.backend not in BF16_BACKENDS:
            raise UserInputError("--precision bf16 needs --backend tensorrt; use fp32 or fp16 with onnxruntime")
        check_int("--max-batch", self.max_batch)
        if self.variant is not None:
            check_variant(self.variant)
        if self.optimize and self.backend != "onnxruntime":
            raise UserInputError("--optimize rewrites ONNX Runtime graphs: TensorRT optimizes its plans itself; "
                                 "drop --optimize or use --backend onnxruntime")
        for side in ("height", "width"):
            value = getattr(self, side)
            if isinstance(value, SizeRange):
                check_size_range(f"--{side}", value, multiple=1)
            elif value is not None:
                check_size(f"--{side}", value, multiple=1)

    @property
    def checks_accuracy(self) -> bool:
        """Whether the build runs the accuracy check (``--check``/``--no-check``; by default
        for the half-precision builds, whose errors are worth measuring)."""
        return self.check if self.check is not None else self.precision != "fp32"

    @property
    def optimizes_graphs(self) -> bool:
        """Whether the build runs ONNX Runtime's transformer optimizer on its graphs."""
        return bool(self.optimize)

    def command(self) -> str:
        """The ``answer-trt build`` command line with every flag of this request, so that
        a rebuild makes the same kind of folder (backend, precision, sizes, batch, weights)."""
        words = ["answer-trt", "build", "--model", self.model, "--out", str(self.out), "--backend", self.backend,
                 "--precision", str(self.precision), "--max-batch", str(self.max_batch)]
        if self.variant is not None:
            words += ["--variant", self.variant]
        for side in ("height", "width"):
            value = getattr(self, side)
            if value is not None:
                words += [f"--{side}", str(value)]
        if self.check is not None:
            words.append("--check" if self.check else "--no-check")
        if self.optimize is not None:
            words.append("--optimize" if self.optimize else "--no-optimize")
        if self.force:
            words.append("--force")
        return shlex.join(words)
