"""`answer-trt build`: model -> ONNX per component -> engines folder with a manifest.

A build whose key (model content, backend, precision, shapes, library versions)
matches the folder's manifest, and whose files still match their checksums, is
skipped. Everything is written into a staging folder first; files are moved into
place with renames and the manifest is written last.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

from answer_trt import __version__
from answer_trt.backends import tensorrt_available
from answer_trt.errors import UserInputError
from answer_trt.manifest import (
    MANIFEST_NAME,
    ComponentEntry,
    Manifest,
    mismatched_files,
    read_manifest,
    write_manifest,
)
from answer_trt.files import sha256_file
from answer_trt.models.info import ModelInfo, read_model_info
from answer_trt.models.source import TOKENIZER_FOLDERS, LoadedModel, ModelSource, load_model, resolve_model
from export.iospec import (
    UNET,
    VAE_DECODER,
    ComponentSpec,
    ModelDims,
    Profile,
    SizeRange,
    component_profiles,
    component_specs,
)

BACKENDS = ("onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16")
# Without --precision: fp32 on ONNX Runtime (CPU), fp16 on TensorRT.
DEFAULT_PRECISION = {"onnxruntime": "fp32", "tensorrt": "fp16"}
# Components that an fp16 build runs in half precision. The text encoder stays fp32:
# it runs once per prompt, and its fp16 ONNX graph mixes types in LayerNormalization.
# A VAE whose config asks for it (force_upcast, SDXL) stays fp32 too.
HALF_PRECISION_COMPONENTS = (UNET, VAE_DECODER)
# Copied beside the engines so that a folder is all `generate --engines` needs.
MODEL_FILES = (*TOKENIZER_FOLDERS, "scheduler")


@dataclass(frozen=True)
class BuildConfig:
    model: str = "tiny"
    out: Path = Path("engines/tiny")
    backend: str = "onnxruntime"
    precision: str | None = None  # None: DEFAULT_PRECISION of the backend
    max_batch: int = 4
    height: SizeRange | int | None = None  # None: the model's default size
    width: SizeRange | int | None = None
    force: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UserInputError(f"unknown backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        if self.precision is None:
            object.__setattr__(self, "precision", DEFAULT_PRECISION[self.backend])
        if self.precision not in PRECISIONS:
            raise UserInputError(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.precision == "bf16" and self.backend != "tensorrt":
            raise UserInputError("--precision bf16 needs --backend tensorrt; use fp32 or fp16 with onnxruntime")
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise UserInputError(f"--max-batch must be an integer >= 1, got {self.max_batch!r}")


@dataclass(frozen=True)
class BuildPlan:
    """A build request resolved against its model: what the artifacts will be."""

    config: BuildConfig
    source: ModelSource
    model_hash: str
    info: ModelInfo
    height: SizeRange
    width: SizeRange

    @cached_property
    def key(self) -> str:
        """sha256 of everything that decides the artifacts; ``force`` and ``out`` are not in it."""
        from export.onnx_export import OPSET

        inputs = {
            "model_hash": self.model_hash,
            "backend": self.config.backend,
            "precision": self.config.precision,
            "max_batch": self.config.max_batch,
            "height": asdict(self.height),
            "width": asdict(self.width),
            "opset": OPSET,
            "versions": library_versions(),
            "gpu": gpu_capability() if self.config.backend == "tensorrt" else None,
        }
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class BuildResult:
    manifest: Manifest
    folder: Path
    skipped: bool


def build(config: BuildConfig, log: Callable[[str], None] = print) -> BuildResult:
    if config.backend == "tensorrt" and not tensorrt_available():
        raise UserInputError(
            "the tensorrt backend needs TensorRT, which is not installed: on a machine with an NVIDIA GPU run "
            "`pip install tensorrt-cu12` (or use the NGC image in docker/), or build with --backend onnxruntime"
        )
    source = resolve_model(config.model)
    info = read_model_info(source.path)
    height, width = (_size_range(side, value, info.dims) for side, value in
                     (("height", config.height), ("width", config.width)))
    plan = BuildPlan(config, source, source.content_hash(), info, height, width)
    key = plan.key
    out = config.out
    if not config.force and _up_to_date(out, key):
        log(f"{out}: up to date with {source.name} (manifest key {key[:12]}), nothing to build")
        return BuildResult(read_manifest(out), out, skipped=True)

    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        manifest = _export_all(plan, load_model(source.path), staging, log)
        _publish(staging, out, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"{out}: built {', '.join(manifest.components)} ({config.backend}, {config.precision})")
    return BuildResult(manifest, out, skipped=False)


def _size_range(side: str, value: SizeRange | int | None, dims: ModelDims) -> SizeRange:
    """The built range of one image side; opt is the model's default size when it lies
    inside, else the low end."""
    default = dims.default_image_size
    if value is None:
        return SizeRange.fixed(default)
    size = SizeRange.fixed(value) if isinstance(value, int) else value
    factor = dims.vae_scale_factor
    for v in (size.low, size.high):
        if v <= 0 or v % factor:
            raise UserInputError(f"--{side} {size}: sizes must be positive multiples of {factor}")
    if size.low > size.high:
        raise UserInputError(f"--{side} {size.low}:{size.high}: the low end is above the high end")
    opt = default if size.low <= default <= size.high else size.low
    return SizeRange(size.low, opt, size.high)


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    versions = {"answer_trt": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__}
    if tensorrt_available():
        from export.tensorrt_build import tensorrt_version

        versions["tensorrt"] = tensorrt_version()
    return versions


def gpu_capability() -> str | None:
    """Compute capability of GPU 0 (``"9.0"`` on an H100), or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return f"{major}.{minor}"


def _up_to_date(out: Path, key: str) -> bool:
    if not (out / MANIFEST_NAME).is_file():
        return False
    try:
        manifest = read_manifest(out)
    except UserInputError:
        return False
    return manifest.key == key and not mismatched_files(out, manifest)


def _export_all(plan: BuildPlan, model: LoadedModel, staging: Path, log: Callable[[str], None]) -> Manifest:
    import torch

    from export.onnx_export import export_onnx
    from export.wrappers import component_modules

    config, dims = plan.config, plan.info.dims
    # bf16 builds export fp32 graphs and let TensorRT pick bf16 layers.
    half_components = set(HALF_PRECISION_COMPONENTS) if config.precision == "fp16" else set()
    if plan.info.vae_force_upcast:
        half_components.discard(VAE_DECODER)
    specs = {
        name: spec.with_dtype("float16") if name in half_components else spec
        for name, spec in component_specs(dims).items()
    }
    profiles = component_profiles(dims, config.max_batch, plan.height, plan.width)
    modules = component_modules(model)
    components = {}
    for name, module in modules.items():
        log(f"exporting {name} to ONNX")
        if name in half_components:
            module = module.to(torch.float16)
        file = f"{name}.onnx"
        export_onnx(module, specs[name], dims, staging / file)
        if config.backend == "tensorrt":
            file = _build_tensorrt_plan(staging / file, specs[name], profiles[name], config.precision, log)
        components[name] = ComponentEntry(file, specs[name], profiles[name])
    for sub in MODEL_FILES:
        if (plan.source.path / sub).is_dir():
            shutil.copytree(plan.source.path / sub, staging / sub)
    files = {
        p.relative_to(staging).as_posix(): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()
    }
    return Manifest(
        key=plan.key,
        backend=config.backend,
        precision=str(config.precision),
        model_name=plan.source.name,
        model_hash=plan.model_hash,
        max_batch=config.max_batch,
        height=plan.height,
        width=plan.width,
        info=plan.info,
        components=components,
        files=files,
        versions=library_versions(),
        gpu_capability=gpu_capability() if config.backend == "tensorrt" else None,
    )


def _build_tensorrt_plan(
    onnx_path: Path, spec: ComponentSpec, profile: Profile, precision: str | None, log: Callable[[str], None]
) -> str:
    """Build ``<component>.plan`` beside its ONNX file; returns the plan's file name."""
    from answer_trt.cache import cache_root
    from export.tensorrt_build import build_plan, tensorrt_version

    log(f"building the TensorRT engine for {spec.name}")
    plan = onnx_path.with_suffix(".plan")
    timing_cache = cache_root() / "tensorrt" / f"timing-{tensorrt_version()}-sm{gpu_capability()}.cache"
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    build_plan(onnx_path, spec, profile, str(precision), plan, timing_cache, log)
    return plan.name


def _publish(staging: Path, out: Path, manifest: Manifest) -> None:
    """Move the staged files into ``out``; the old manifest goes first and the new one
    comes last, so an interrupted publish leaves a folder that loads as 'rebuild'."""
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for entry in sorted(staging.iterdir()):
        target = out / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        entry.replace(target)
    write_manifest(out, manifest)
