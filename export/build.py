"""`answer-trt build`: model -> ONNX per component -> engines folder with a manifest.

A build whose key (model content, weights variant and LoRAs, backend, precision, shapes, library versions)
matches the folder's manifest, and whose files still match their checksums, is
skipped. The build writes only into an engines folder it owns (a new folder, an empty
one, or one with a manifest of ours; never a model folder), into a staging folder
beside ``--out`` that is published in one atomic step (``answer_trt.export.publish``). With
``--check`` the staged components are first compared with their torch reference
(``answer_trt.export.accuracy``); a failure publishes nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from answer_trt.backends import tensorrt_available
from answer_trt.build_config import BuildConfig
from answer_trt.errors import UserInputError
from answer_trt.export.publish import (
    MODEL_FILES,
    OUTPUT_NAMES,
    Staging,
    build_lock,
    check_collisions,
    clean_stale,
    inspect_out,
    make_folders,
    publish,
    remove_empty,
)
from answer_trt.files import sha256_file
from answer_trt.iospec import (
    COMPONENT_SETS,
    CONTROLNETS,
    UNET,
    ComponentSpec,
    ModelDims,
    Profile,
    SizeRange,
    component_profiles,
    component_specs,
)
from answer_trt.manifest import (
    MANIFEST_NAME,
    MAX_LORAS,
    SCHEDULER_CONFIG,
    TOKENIZER_FOLDERS,
    BuildResult,
    ComponentEntry,
    ControlNetEntry,
    LoraEntry,
    Manifest,
    SingleFileEntry,
    VaeEntry,
    check_manifest_text,
    mismatched_files,
    read_manifest,
)
from answer_trt.models.controlnet import ControlNetFolder, check_controlnet, controlled_info, load_controlnet
from answer_trt.models.fast_tokenizer import write_fast_tokenizer
from answer_trt.models.info import ModelInfo, read_json_object, read_model_info, scheduler_config
from answer_trt.models.lora import LoraFile, check_lora
from answer_trt.models.source import (
    LoadedModel,
    ModelSource,
    load_model,
    resolve_model,
)
from answer_trt.models.vae_file import VaeFile, check_vae
from answer_trt.precision import component_dtype
from answer_trt.rules import check_memory, check_size_range
from answer_trt.schedulers import check_scheduler_config
from answer_trt.versions import gpu_capability, library_versions

# The layout of what a build writes beside the graphs; raised when it changes, so that the
# key changes and an older folder is rebuilt (2: the tokenizers' `tokenizers` files).
# 3: the manifest records the UNet's up factor (ModelDims.size_multiple); 4: the text encoder
# takes clip_skip; 5: the VAE encoder (``--components``) and the UNet's dynamic text axis (text_length:
# A1111's long prompts).
ARTIFACT_LAYOUT = 5


@dataclass(frozen=True)
class BuildPlan:
    """A build request resolved against its model: what the artifacts will be."""

    config: BuildConfig
    source: ModelSource
    model_hash: str
    info: ModelInfo
    height: SizeRange
    width: SizeRange
    loras: tuple[LoraFile, ...] = ()  # checked and hashed (models/lora.py), fused in this order
    vae: VaeFile | None = None  # --vae, checked and hashed (models/vae_file.py)
    controlnets: tuple[ControlNetFolder, ...] = ()  # checked and hashed (models/controlnet.py), in this order

    @cached_property
    def key(self) -> str:
        """sha256 of everything that decides the artifacts; ``force`` and ``out`` are not in it."""
        from answer_trt.export.onnx_export import OPSET

        inputs: dict[str, Any] = {
            "model_hash": self.model_hash,
            "backend": self.config.backend,
            "precision": self.config.precision,
            "max_batch": self.config.max_batch,
            "max_prompt_chunks": self.config.max_prompt_chunks,
            "height": asdict(self.height),
            "width": asdict(self.width),
            "opset": OPSET,
            "layout": ARTIFACT_LAYOUT,
            "components": self.config.components,
            "optimize": self.config.optimizes_graphs,
            "versions": library_versions(),
            "gpu": gpu_capability() if self.config.compiles_for_gpu else None,
        }
        if self.config.backend == "inductor":  # in the key only there: other builds keep their keys
            inputs["device"] = self.config.device
        if self.config.backend == "openvino":
            from answer_trt.backends.openvino import openvino_version

            inputs["openvino"] = openvino_version()
        # In the key only when set: plain builds keep their keys.
        if self.source.variant is not None:
            inputs["variant"] = self.source.variant
        if self.loras:
            inputs["loras"] = [[lora.sha256, lora.scale] for lora in self.loras]
        if self.vae is not None:
            inputs["vae"] = self.vae.sha256
        if self.controlnets:
            inputs["controlnets"] = [[c.sha256, c.scale] for c in self.controlnets]
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def build(config: BuildConfig, log: Callable[[str], None] = print) -> BuildResult:
    if config.backend == "tensorrt" and not tensorrt_available():
        from answer_trt.backends.bindings import tensorrt_install_hint
        from answer_trt.versions import torch_cuda_version

        raise UserInputError(
            "the tensorrt backend needs TensorRT, which is not installed: on a machine with an NVIDIA GPU "
            f"{tensorrt_install_hint(torch_cuda_version())} (or use the NGC image in docker/), or build with "
            "--backend onnxruntime"
        )
    if config.backend == "inductor":
        from answer_trt.export.inductor_build import check_can_compile

        check_can_compile(config.device)
    if config.backend == "openvino":  # one line where OpenVINO or the CPU's bf16 is missing
        from answer_trt.backends.openvino import check_precision_here, require_openvino

        require_openvino()
        check_precision_here(str(config.precision))
    plan = _plan(config)  # every check of the model and the flags, before any folder or lock is made
    out = config.out.resolve()
    created = make_folders(out.parent)
    try:
        with build_lock(out, log):  # concurrent first users of one folder: one builds, the others reuse
            return _build_locked(plan, log, created)
    except BaseException:
        remove_empty(created)  # folders this build made go again
        raise


def _plan(config: BuildConfig) -> BuildPlan:
    """The build's plan, with the model, its configs, the flags and the LoRAs checked
    (``UserInputError`` in one line); writes nothing but a single file's conversion into the cache."""
    source = resolve_model(config.model, config.variant, config.model_config)
    if config.out.resolve().is_relative_to(source.path):
        raise UserInputError(f"--out {config.out} is inside the model folder {source.path}: answer-trt never "
                             "writes into a model; choose an --out outside it")
    info = read_model_info(source.path)
    check_scheduler_config(scheduler_config(source.path))  # one line naming the key, before anything is built
    height, width = (_size_range(side, value, info.dims) for side, value in
                     (("height", config.height), ("width", config.width)))
    check_build_memory(config, info.dims, height, width)
    if len(config.loras) > MAX_LORAS:
        raise UserInputError(f"{len(config.loras)} --lora adapters: one build fuses at most {MAX_LORAS}; merge some "
                             "of them first")
    check_manifest_text(source.name, "--model")
    if source.checkpoint is not None:
        check_manifest_text(source.checkpoint.config, "--config")
    loras = tuple(check_lora(spec) for spec in config.loras)  # before any model is loaded
    for lora in loras:
        check_manifest_text(str(lora.path), "--lora")
    vae = None
    if config.vae is not None:
        vae = check_vae(config.vae, source.path)
        check_manifest_text(str(vae.path), "--vae")
    controlnets = tuple(check_controlnet(spec, source.path) for spec in config.controlnets)
    for controlnet in controlnets:
        check_manifest_text(str(controlnet.path), "--controlnet")
    info = controlled_info(info, source.path, len(controlnets))  # the UNet takes their residuals
    return BuildPlan(config, source, source.content_hash(), info, height, width, loras, vae, controlnets)


def _build_locked(plan: BuildPlan, log: Callable[[str], None], created: list[Path]) -> BuildResult:
    config, source = plan.config, plan.source
    if source.checkpoint is not None:
        log(source.checkpoint.describe())
    clean_stale(config.out.resolve())
    target = inspect_out(config.out, config.force)
    key = plan.key
    out = config.out
    if not config.force and _up_to_date(out, key):
        if not config.checks_accuracy or read_manifest(out).accuracy is not None:
            log(f"{out}: up to date with {source.name} (manifest key {key[:12]}), nothing to build")
            return BuildResult(read_manifest(out), out, skipped=True)
        log(f"{out}: up to date but built without the accuracy check; rebuilding to run it")

    check_collisions(target, OUTPUT_NAMES)
    try:
        with Staging.beside(target.path) as staging:
            model = load_model(source.path, source.variant, plan.loras, plan.vae)
            manifest = _export_all(plan, model, staging.path, log)
            if config.checks_accuracy:
                if config.precision == "fp16":  # the export cast its half components in place: reload fp32
                    del model
                    model = load_model(source.path, source.variant, plan.loras, plan.vae)
                manifest = _check_accuracy(plan, model, staging.path, manifest, log)
            del model
            publish(staging, target, manifest)
    except BaseException:
        remove_empty(created)
        raise
    log(f"{out}: built {', '.join(manifest.components)} ({config.backend}, {config.precision})")
    return BuildResult(manifest, out, skipped=False)


def _size_range(side: str, value: SizeRange | int | None, dims: ModelDims) -> SizeRange:
    """The built range of one image side; opt is the model's default size when it lies
    inside, else the low end."""
    default = dims.default_image_size
    if value is None:
        return SizeRange.fixed(default)
    size = check_size_range(f"--{side}", SizeRange.fixed(value) if isinstance(value, int) else value,
                            multiple=dims.size_multiple)
    opt = default if size.low <= default <= size.high else size.low
    return SizeRange(size.low, opt, size.high)


def check_build_memory(config: BuildConfig, dims: ModelDims, height: SizeRange, width: SizeRange) -> None:
    """Refuse, before anything is exported, engines whose promises no run could keep within
    the memory limit (``answer_trt.rules.check_memory``): ``--max-batch`` images at the
    smallest built size, and one image at the largest. (The two corners together may
    exceed it: a folder built for both serves large batches of small images and small
    batches of large ones.)"""
    precision = str(config.precision)
    check_memory(dims, config.max_batch, height.low, width.low, precision, batch_flag="--max-batch",
                 size_label="the smallest built size, ")
    check_memory(dims, 1, height.high, width.high, precision, batch_flag="batch",
                 size_label="the largest built size, ")


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

    from answer_trt.export.onnx_export import export_onnx

    config, dims = plan.config, plan.info.dims
    # Builds are strongly typed: each graph is exported in the dtype it runs in (fp16 / bf16
    # UNet and VAE, fp32 text encoder and upcast VAE: answer_trt/precision.py).
    wanted = (*COMPONENT_SETS[config.components], *CONTROLNETS[:len(plan.controlnets)])
    # OpenVINO converts float32 graphs and chooses its precision when it compiles them.
    graph_precision = "fp32" if config.backend == "openvino" else str(config.precision)
    dtypes = {name: component_dtype(name, graph_precision, plan.info.vae_force_upcast) for name in wanted}
    specs = {
        name: spec.with_dtype(dtypes[name]) if dtypes[name] != "float32" else spec
        for name, spec in component_specs(dims).items() if name in wanted
    }
    profiles = component_profiles(dims, config.max_batch, plan.height, plan.width, config.max_prompt_chunks)
    modules = {name: module for name, module in _modules(plan, model).items() if name in wanted}
    components = {}
    for name, module in modules.items():
        if dtypes[name] != "float32":
            module = module.to(getattr(torch, dtypes[name]))
        if config.backend == "inductor":
            from answer_trt.export.inductor_build import compile_package

            log(f"compiling {name} with AOTInductor for {config.device}")
            file = compile_package(module, specs[name], profiles[name], dims, config.device,
                                   staging / f"{name}.pt2", log).name
            components[name] = ComponentEntry(file, specs[name], profiles[name])
            continue
        log(f"exporting {name} to ONNX")
        file = f"{name}.onnx"
        export_onnx(module, specs[name], dims, staging / file)
        if config.backend == "tensorrt":
            file = _build_tensorrt_plan(staging / file, specs[name], profiles[name], config.precision, log)
        if config.backend == "openvino":
            from answer_trt.export.openvino_build import convert_component

            file = convert_component(staging / file, log)
        components[name] = ComponentEntry(file, specs[name], profiles[name])
    optimization = None
    if config.optimizes_graphs:
        from answer_trt.export.graph_optimize import optimize_components

        optimization = optimize_components(staging, components, log)
    session = None
    versions = library_versions()
    if config.backend == "onnxruntime":
        from answer_trt.export.session_tune import choose_session

        session = choose_session(staging, components[UNET], log)
    if config.backend == "openvino":
        from answer_trt.backends.openvino import inference_precision, openvino_version
        from answer_trt.export.openvino_build import choose_threads

        hint = inference_precision(UNET, str(config.precision), plan.info.vae_force_upcast)
        session = choose_threads(staging, components[UNET], hint, log)
        versions["openvino"] = openvino_version()
    for sub in MODEL_FILES:
        if (plan.source.path / sub).is_dir():
            shutil.copytree(plan.source.path / sub, staging / sub)
    copied = read_json_object(staging / SCHEDULER_CONFIG)
    if copied.get("_class_name") != model.scheduler_config.get("_class_name"):  # model_index.json's class wins
        (staging / SCHEDULER_CONFIG).write_text(json.dumps(model.scheduler_config, indent=2, sort_keys=True) + "\n")
    tokenizer_subs = [sub for sub in TOKENIZER_FOLDERS if (plan.source.path / sub).is_dir()]
    for sub, tokenizer in zip(tokenizer_subs, model.tokenizers):
        write_fast_tokenizer(tokenizer, plan.source.path / sub, staging / sub, plan.info.dims.text_max_length)
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
        versions=versions,
        gpu_capability=gpu_capability() if config.compiles_for_gpu else None,
        graph_optimization=optimization,
        session=session,
        variant=plan.source.variant,
        loras=tuple(LoraEntry(str(lora.path), lora.sha256, lora.scale) for lora in plan.loras),
        device=config.device if config.backend == "inductor" else None,
        single_file=_single_file_entry(plan.source),
        vae=VaeEntry(str(plan.vae.path), plan.vae.sha256, plan.vae.layout) if plan.vae is not None else None,
        controlnets=tuple(ControlNetEntry(str(c.path), c.sha256, c.scale) for c in plan.controlnets),
    )


def _modules(plan: BuildPlan, model: LoadedModel) -> dict[str, Any]:
    """The spec-shaped torch modules of ``model``, with the plan's ControlNets where it has any."""
    from answer_trt.backends.torch_controlnet import with_controlnets
    from answer_trt.backends.torch_modules import component_modules

    controlnets = [load_controlnet(c) for c in plan.controlnets]
    dims = plan.info.dims
    return with_controlnets(component_modules(model), controlnets, len(dims.control_residuals),
                            bool(dims.pooled_size))


def _single_file_entry(source: ModelSource) -> SingleFileEntry | None:
    checkpoint = source.checkpoint
    return None if checkpoint is None else SingleFileEntry(checkpoint.sha256, checkpoint.family.label,
                                                             checkpoint.config)


def _check_accuracy(plan: BuildPlan, model: LoadedModel, staging: Path, manifest: Manifest,
                    log: Callable[[str], None]) -> Manifest:
    """Compare the staged components with the float32 torch modules of ``model`` (``answer_trt.export.accuracy``),
    before anything is published; a failure raises ``UserInputError``, and the staging
    folder goes with it. Returns the manifest with the check's record."""
    from answer_trt.export.accuracy import check_components

    log("checking the built components against the torch reference (Polygraphy)")
    check = check_components(staging, manifest.components, _modules(plan, model), plan.config.backend,
                             str(plan.config.precision), log, device=plan.config.device,
                             force_upcast=plan.info.vae_force_upcast)
    return replace(manifest, accuracy=check)


def _build_tensorrt_plan(
    onnx_path: Path, spec: ComponentSpec, profile: Profile, precision: str | None, log: Callable[[str], None]
) -> str:
    """Build ``<component>.plan`` beside its ONNX file; returns the plan's file name."""
    from answer_trt.cache import cache_root
    from answer_trt.export.tensorrt_build import build_plan, tensorrt_version

    log(f"building the TensorRT engine for {spec.name}")
    plan = onnx_path.with_suffix(".plan")
    timing_cache = cache_root() / "tensorrt" / f"timing-{tensorrt_version()}-sm{gpu_capability()}.cache"
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    build_plan(onnx_path, spec, profile, str(precision), plan, timing_cache, log)
    return plan.name
