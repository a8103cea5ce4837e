"""Make a Pipeline from an engines folder, a model (built into the cache), or a model
run eagerly in torch.

``build_engines`` is the runtime's one way into the export stage (``answer_trt.export.build``),
imported lazily there: importing the runtime never loads the export stack (ONNX,
the exporter), and a machine that only runs engines never needs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from answer_trt.build_config import BuildConfig, ControlNetSpec, LoraSpec, build_precision, lora_specs
from answer_trt.cache import cache_root
from answer_trt.errors import UserInputError
from answer_trt.files import read_bounded
from answer_trt.manifest import MANIFEST_NAME, SCHEDULER_CONFIG, BuildResult, Manifest, read_manifest, verify_files
from answer_trt.models.lora import check_lora, lora_tag
from answer_trt.pipeline import BuiltWeights, Limits, Pipeline
from answer_trt.rules import (
    DEFAULT_MAX_BATCH,
    DEFAULT_PRECISION,
    DEVICES,
    LOAD_BACKENDS,
    PRECISIONS,
    check_choice,
    check_memory,
    check_variant,
)


def load(
    source: str | Path = "tiny", *, backend: str | None = None, device: str = "cpu", build_log: Any = None,
    variant: str | None = None, loras: Any = None, config: str | Path | None = None,
    lora_dir: str | Path | None = None, vae: str | Path | None = None, controlnets: Any = None,
    precision: str | None = None,
) -> Any:
    """``source``: an engines folder (has manifest.json), or a MODEL (``tiny``, a
    diffusers folder, a single-file ``.safetensors`` checkpoint, a hub id). A model is built
    into the cache on first use, or run eagerly with ``backend="torch"`` (``device="cuda"``:
    the fp16 rule of ``answer_trt.precision`` on the GPU: fp16 UNet and VAE, fp32 text encoder
    and upcast VAE).
    ``variant``: the model's weights variant (``"fp16"`` for
    ``unet/diffusion_pytorch_model.fp16.safetensors``, as diffusers' ``from_pretrained(variant=)``);
    by default the plain weights, or the one variant a folder holds its weights as.
    ``loras``: LoRA adapters fused into the weights, in order: ``["style.safetensors:0.8"]``
    (``"FILE[:SCALE]"`` strings, paths or ``(path, scale)`` pairs; ``answer_trt.models.lora``).
    With an engines folder, both must be what the folder was built with.
    ``config``: for a single-file checkpoint (``"model.safetensors"``), the diffusers folder or
    hub id whose configs and tokenizer it is converted with (default: the configs answer-trt ships
    for its family, no network; ``answer_trt.models.single_file``).
    ``lora_dir``: A1111's models/Lora folder: returns a ``LoraDirPipeline`` whose calls read
    ``<lora:NAME:SCALE>`` tags (A1111 prompt syntax) and run the model with ``NAME.safetensors``
    fused at SCALE (after ``loras``), built into the cache once per set; a MODEL only.
    ``vae``: a VAE in place of the model's own: a diffusers AutoencoderKL folder or a ``.safetensors``
    VAE file (A1111's models/VAE; ``answer_trt.models.vae_file``); with an engines folder, the one
    it was built with.
    ``controlnets``: diffusers ControlNet folders built beside the UNet, ``["canny-dir:0.8"]``
    (``"DIR[:SCALE]"`` strings or ``ControlNetSpec``; ``answer_trt.controlnet``); with an engines
    folder, what it was built with.
    ``precision``: the precision of engines built into the cache (``"fp32"``, or ``"bf16"`` with
    ``backend="openvino"``); by default the backend's: openvino runs bf16 where the CPU has native
    bf16, fp32 elsewhere (``build_config.build_precision``)."""
    if not isinstance(source, (str, os.PathLike)) or isinstance(source, bytes):
        raise UserInputError(f"load() takes a model name, a model folder or an engines folder as a str or path, "
                             f"got {type(source).__name__}: e.g. load('tiny')")
    if backend is not None:
        check_choice("backend", backend, LOAD_BACKENDS)
    check_choice("device", device, DEVICES)
    if precision is not None:
        check_choice("precision", precision, PRECISIONS)
        if backend == "torch" or (Path(source) / MANIFEST_NAME).is_file():
            raise UserInputError("precision chooses the engines built into the cache for a MODEL: an engines folder "
                                 "has its own and backend='torch' follows the device; drop precision")
    if variant is not None:
        check_variant(variant)
    specs = lora_specs(loras)
    if config is not None and (not isinstance(config, (str, os.PathLike)) or isinstance(config, bytes)):
        raise UserInputError(f"config takes a diffusers folder or hub id as a str or path, got {type(config).__name__}")
    model_config = None if config is None else os.fspath(config)
    if vae is not None and (not isinstance(vae, (str, os.PathLike)) or isinstance(vae, bytes)):
        raise UserInputError(f"vae takes a VAE file or folder as a str or path, got {type(vae).__name__}")
    vae_path = None if vae is None else os.fspath(vae)
    if lora_dir is not None:
        from answer_trt.prompts.lora_dir import check_lora_dir

        if (Path(source) / MANIFEST_NAME).is_file():
            raise UserInputError(f"lora_dir chooses engines built into the cache for the tags' LoRAs; {source} was "
                                 "built with its own: pass a MODEL with lora_dir, or drop lora_dir")
        return LoraDirPipeline(lambda chosen: load(source, backend=backend, device=device, build_log=build_log,
                                                   variant=variant, loras=chosen, config=config, vae=vae,
                                                   controlnets=controlnets, precision=precision),
                               check_lora_dir(lora_dir), specs)
    controls = controlnet_specs(controlnets)
    if backend == "torch":
        return from_model_eager(str(source), device, variant=variant, loras=specs, config=model_config, vae=vae_path,
                                controlnets=controls)
    if device != "cpu":
        raise UserInputError(f"device {device!r} applies to backend='torch' (engines choose their own device): "
                             f"pass backend='torch', or build TensorRT engines for the GPU")
    if (Path(source) / MANIFEST_NAME).is_file():
        pipe = from_engines(Path(source), expect_variant=variant, expect_loras=specs if loras is not None else None,
                            expect_vae=vae_path)
        if controlnets is not None:
            check_built_controlnets(Path(source), read_manifest(Path(source)), controls)
        return pipe
    return from_engines(build_cached(str(source), log=build_log, variant=variant, loras=specs, config=model_config,
                                     vae=vae_path, backend=backend or "onnxruntime", controlnets=controls,
                                     precision=precision),
                        verify=False)

class LoraDirPipeline:
    """``load(MODEL, lora_dir=DIR)``: each call's ``<lora:NAME:SCALE>`` tags (A1111's prompt syntax,
    the default here) choose ``DIR/NAME.safetensors`` at SCALE (``answer_trt.prompts.lora_dir``);
    the model's pipeline with that set fused is made once per set (``make``) and kept. Calls as
    ``Pipeline``'s: ``pipe(prompt, ...)`` and ``pipe.generate(prompt, ...)``."""

    def __init__(self, make: Callable[[tuple[LoraSpec, ...]], Pipeline], lora_dir: Path,
                 loras: tuple[LoraSpec, ...] = ()) -> None:
        self.lora_dir, self._make, self._loras = lora_dir, make, loras
        self._pipelines: dict[tuple[tuple[Path, float], ...], Pipeline] = {}

    def pipeline_for(self, prompt: str | None, negative_prompt: str | None = None,
                     prompt_syntax: str = "a1111") -> Pipeline:
        """The pipeline with the LoRAs the tags of ``prompt`` and ``negative_prompt`` select."""
        from answer_trt.prompts.lora_dir import lora_dir_loras

        chosen = lora_dir_loras(self.lora_dir, self._loras, prompt_syntax, (prompt, negative_prompt))
        key = tuple((spec.path, spec.scale) for spec in chosen)
        if key not in self._pipelines:
            self._pipelines[key] = self._make(chosen)
        return self._pipelines[key]

    def __call__(self, prompt: str | None = None, **kwargs: Any) -> Any:
        kwargs.setdefault("prompt_syntax", "a1111")
        return self.pipeline_for(prompt, kwargs.get("negative_prompt"), kwargs["prompt_syntax"])(prompt, **kwargs)

    def generate(self, prompt: str, **kwargs: Any) -> Any:
        kwargs.setdefault("prompt_syntax", "a1111")
        return self.pipeline_for(prompt, kwargs.get("negative_prompt"), kwargs["prompt_syntax"]).generate(
            prompt, **kwargs)


def controlnet_specs(controlnets: Any) -> tuple[ControlNetSpec, ...]:
    """The Python API's ``controlnets=``: ``"DIR[:SCALE]"`` strings, paths or ``ControlNetSpec``
    values (one alone is a list of one); None: none."""
    if controlnets is None:
        return ()
    if isinstance(controlnets, (str, os.PathLike, ControlNetSpec)):
        controlnets = [controlnets]
    if not isinstance(controlnets, (list, tuple)):
        raise UserInputError(f"controlnets takes a list of 'DIR[:SCALE]' strings, got {type(controlnets).__name__}")
    specs = []
    for item in controlnets:
        if isinstance(item, ControlNetSpec):
            specs.append(item)
        elif isinstance(item, (str, os.PathLike)):
            specs.append(ControlNetSpec.parse(os.fspath(item)))
        else:
            raise UserInputError(f"controlnets: {item!r} is not a 'DIR[:SCALE]' string or path")
    return tuple(specs)


def check_built_controlnets(folder: Path, manifest: Manifest, controlnets: tuple[ControlNetSpec, ...]) -> None:
    """Refuse, in one line with the build command that would make it, a folder built with other
    ControlNets than ``controlnets`` (compared by content sha256 and scale, in order)."""
    from answer_trt.files import tree_sha256

    wanted = []
    for spec in controlnets:
        if not spec.path.expanduser().is_dir():
            raise UserInputError(f"--controlnet {spec.path}: no such folder")
        wanted.append((tree_sha256(spec.path.expanduser()), spec.scale))
    if wanted != [(e.sha256, e.scale) for e in manifest.controlnets]:
        built = ", ".join(f"{e.name} (sha256 {e.sha256[:12]}) at {e.scale!r}" for e in manifest.controlnets) or "none"
        raise UserInputError(f"{folder} was built with the ControlNets {built}, not the ones asked for: leave "
                             f"--controlnet out, or build it with "
                             f"`{replace(manifest.build_config(folder), controlnets=controlnets).command()}`")


def from_engines(folder: Path, verify: bool = True, session: Any = None, expect_variant: str | None = None,
                 expect_loras: tuple[LoraSpec, ...] | None = None, expect_vae: str | None = None) -> Pipeline:
    """``verify=False`` skips the checksums: only for a folder that ``build`` has just
    built or found up to date, which checked them already (hashing GBs twice is slow).
    ``session``: ONNX Runtime ``SessionSettings`` (default: the measured defaults, with the
    intra-op thread count the build measured where the manifest records one).
    ``expect_variant`` / ``expect_loras``: refuse a folder built from another weights variant
    or with other LoRA adapters (None: any), or without the VAE ``expect_vae`` (None: any)."""
    from answer_trt.backends.ort import OnnxRuntimeEngine, SessionSettings
    from answer_trt.models.source import load_engine_tokenizers

    manifest = read_manifest(folder)
    check_built_weights(folder, manifest, expect_variant, expect_loras, expect_vae)
    if verify:
        verify_files(folder, manifest)
    engines: dict[str, Any]
    device, stream = "cpu", None
    if manifest.backend == "tensorrt":
        engines, stream = _tensorrt_engines(folder, manifest)
        device = "cuda"
    elif manifest.backend == "inductor":
        from answer_trt.backends.inductor import load_engines as load_inductor_engines

        device = manifest.device or "cpu"
        engines = dict(load_inductor_engines(
            folder, {name: (e.file, e.spec, e.profile) for name, e in manifest.components.items()}, device,
            manifest.versions.get("torch"), manifest.gpu_capability, manifest.build_command(folder)))
    elif manifest.backend == "openvino":
        from answer_trt.backends.openvino import load_engines as load_openvino_engines

        threads = manifest.session.threads_here(os.cpu_count()) if manifest.session is not None else 0
        engines = dict(load_openvino_engines(
            folder, {name: (e.file, e.spec, e.profile) for name, e in manifest.components.items()},
            manifest.precision, manifest.info.vae_force_upcast, threads, manifest.build_command(folder),
            static=bool(manifest.session is not None and manifest.session.static_shapes)))
    else:
        rebuild = manifest.build_command(folder)
        if session is None:
            threads = manifest.session.threads_here(os.cpu_count()) if manifest.session is not None else 0
            session = SessionSettings(intra_op_threads=threads)
        engines = {
            name: OnnxRuntimeEngine(folder / entry.file, entry.spec, entry.profile, rebuild_command=rebuild,
                                    settings=session)
            for name, entry in manifest.components.items()
        }
    return Pipeline(
        tokenizers=load_engine_tokenizers(folder, manifest.files),
        # A single file's PNGs name the file's own sha256, whose first 10 digits are A1111's "Model hash".
        weights=BuiltWeights(manifest.variant, tuple(lora_tag(e.name, e.sha256, e.scale) for e in manifest.loras),
                             manifest.single_file.sha256 if manifest.single_file else manifest.model_hash,
                             manifest.vae.sha256 if manifest.vae else None,
                             manifest.vae.name if manifest.vae else None,
                             tuple(e.tag for e in manifest.controlnets), tuple(e.scale for e in manifest.controlnets)),
        engines=engines,
        scheduler_config=_scheduler_config(folder, manifest),
        info=manifest.info,
        model_name=manifest.model_name,
        backend=manifest.backend,
        precision=manifest.precision,
        device=device,
        stream=stream,
        limits=engine_limits(folder, manifest),
    )


def check_built_weights(folder: Path, manifest: Manifest, variant: str | None,
                        loras: tuple[LoraSpec, ...] | None, vae: str | None = None) -> None:
    """Refuse, in one line with the build command that would make it, a folder built from
    another weights ``variant`` (None: any), with other ``loras`` (files compared by sha256,
    and scales; None: any) or without the VAE ``vae`` (compared by sha256; None: any)."""
    if vae is not None:
        from answer_trt.models.vae_file import vae_digest

        path = Path(vae).expanduser()
        if not path.exists():
            raise UserInputError(f"--vae {vae}: no such file or folder: pass a VAE .safetensors file or folder")
        if manifest.vae is None or manifest.vae.sha256 != vae_digest(path):
            built = f"the VAE {manifest.vae.path}" if manifest.vae else "the model's own VAE"
            raise UserInputError(f"{folder} was built with {built}, not --vae {vae}: drop --vae, or build it with "
                                 f"`{replace(manifest.build_config(folder), vae=str(path.resolve())).command()}`")
    if variant is not None and manifest.variant != variant:
        built = f"the {manifest.variant} weights variant" if manifest.variant else "the plain weights"
        raise UserInputError(f"{folder} was built from {built} of {manifest.model_name}, not the {variant} "
                             f"variant: leave the variant out, or build it with "
                             f"`{replace(manifest.build_config(folder), variant=variant).command()}`")
    if loras is None:
        return
    wanted = [(lora.sha256, lora.scale) for lora in (check_lora(spec) for spec in loras)]
    if wanted != [(entry.sha256, entry.scale) for entry in manifest.loras]:
        built = ", ".join(f"{e.name} (sha256 {e.sha256[:12]}) at {e.scale!r}" for e in manifest.loras) or "no LoRA"
        raise UserInputError(f"{folder} was built with {built}, not the LoRAs asked for: leave loras out, or build "
                             f"it with `{replace(manifest.build_config(folder), loras=loras).command()}`")


def engine_limits(folder: Path, manifest: Manifest) -> Limits:
    """What the engines in ``folder`` were built for, and the build that replays them."""
    return Limits(manifest.max_batch, manifest.height, manifest.width, manifest.build_config(folder),
                  manifest.max_prompt_chunks)


def _scheduler_config(folder: Path, manifest: Manifest) -> dict[str, Any]:
    """The scheduler config copied beside the engines: a JSON object, or a user error."""
    path = folder / SCHEDULER_CONFIG
    try:
        config = json.loads(read_bounded(path))
    except (OSError, ValueError, RecursionError):  # unreadable, too large, not JSON, absurdly nested
        config = None
    if not isinstance(config, dict):
        raise UserInputError(f"{path} is not a scheduler config (a JSON object): rebuild with "
                             f"`{manifest.build_command(folder)}`")
    return config


def _tensorrt_engines(folder: Path, manifest: Manifest) -> tuple[dict[str, Any], Any]:
    from answer_trt.backends.bindings import tensorrt_install_hint
    from answer_trt.versions import tensorrt_available, torch_cuda_version

    try:
        if not tensorrt_available():  # tensorrt-stubs alone imports as an empty namespace package
            raise ImportError("tensorrt")
        from answer_trt.backends.tensorrt import load_engines
    except ImportError:
        raise UserInputError(
            f"{folder} holds TensorRT engines, and TensorRT (or cuda-python) is not installed here: on a machine "
            f"with an NVIDIA GPU {tensorrt_install_hint(torch_cuda_version())} and `pip install cuda-python`, or "
            "build ONNX Runtime engines"
        ) from None
    components = {name: (e.file, e.spec, e.profile) for name, e in manifest.components.items()}
    engines, stream = load_engines(folder, components, manifest.versions.get("tensorrt"), manifest.gpu_capability,
                                   manifest.build_command(folder))
    return dict(engines), stream.torch_stream


def from_model_eager(model: str, device: str = "cpu", variant: str | None = None,
                     loras: tuple[LoraSpec, ...] = (), config: str | None = None, vae: str | None = None,
                     controlnets: tuple[ControlNetSpec, ...] = ()) -> Pipeline:
    """``model`` (its weights ``variant``, with ``loras`` fused; a single file with the
    configs of ``config``; ``vae`` in place of its VAE; ``controlnets`` beside its UNet) run
    eagerly in torch (``load(..., backend="torch")``)."""
    import torch

    from answer_trt.backends.torch_controlnet import with_controlnets
    from answer_trt.backends.torch_eager import TorchEngine
    from answer_trt.backends.torch_modules import component_modules
    from answer_trt.iospec import component_specs
    from answer_trt.models.controlnet import check_controlnet, controlled_info, load_controlnet
    from answer_trt.models.info import read_model_info
    from answer_trt.models.source import load_model, resolve_model
    from answer_trt.models.vae_file import check_vae
    from answer_trt.precision import torch_dtype

    check_choice("device", device, DEVICES)
    if device == "cuda" and not torch.cuda.is_available():
        raise UserInputError("device cuda was asked for, and torch sees no CUDA GPU here: use device cpu")
    source = resolve_model(model, variant, config)
    info = read_model_info(source.path)  # first: its messages name a broken config file
    checked = tuple(check_lora(spec) for spec in loras)
    vae_file = check_vae(vae, source.path) if vae is not None else None
    controls = tuple(check_controlnet(spec, source.path) for spec in controlnets)
    info = controlled_info(info, source.path, len(controls))
    loaded = load_model(source.path, source.variant, checked, vae_file)
    specs = component_specs(info.dims)
    precision = "fp16" if device == "cuda" else "fp32"
    engines = {
        name: TorchEngine(module, specs[name], torch_dtype(name, precision, info.vae_force_upcast), device)
        for name, module in with_controlnets(component_modules(loaded), [load_controlnet(c) for c in controls],
                                             len(info.dims.control_residuals), bool(info.dims.pooled_size)).items()
    }
    return Pipeline(
        tokenizers=loaded.tokenizers,
        weights=BuiltWeights(source.variant, tuple(lora.tag for lora in checked), None,
                             vae_file.sha256 if vae_file else None, vae_file.name if vae_file else None,
                             tuple(c.tag for c in controls), tuple(c.scale for c in controls)),
        engines=engines,  # type: ignore[arg-type]
        scheduler_config=loaded.scheduler_config,
        info=info,
        model_name=source.name,
        backend="torch",
        precision=precision,
        device=device,
    )


def cached_engines_folder(model: str, height: int | None, width: int | None, max_batch: int,
                          variant: str | None = None, loras: tuple[LoraSpec, ...] = (),
                          config: str | None = None, vae: str | None = None, backend: str = "onnxruntime",
                          controlnets: tuple[ControlNetSpec, ...] = (), precision: str = "fp32") -> Path:
    """One cache folder per model, weights variant, LoRAs (files by path, and scales), single-file
    configs, ``--vae`` (by path), backend (onnxruntime or openvino), precision and build shape:
    ``<cache>/engines/<name>-<hash>-...``. (A LoRA file or single-file checkpoint changed in place
    is rebuilt in the same folder: the build key holds its sha256.)"""
    from answer_trt.models.source import BUILT_IN_MODELS

    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model).name or model)[:40]
    local = model not in BUILT_IN_MODELS and Path(model).exists()
    where = str(Path(model).expanduser().resolve()) if local else model
    if variant is not None:
        where += f"\0variant={variant}"
    for lora in loras:
        where += f"\0lora={lora.path.expanduser().resolve()}:{lora.scale!r}"
    for controlnet in controlnets:
        where += f"\0controlnet={controlnet.path.expanduser().resolve()}:{controlnet.scale!r}"
    if config is not None:
        local_config = Path(config).expanduser()
        where += f"\0config={local_config.resolve() if local_config.is_dir() else config}"
    if vae is not None:
        where += f"\0vae={Path(vae).expanduser().resolve()}"
    if backend != "onnxruntime":  # in the name only there: ONNX Runtime's folders keep theirs
        where += f"\0backend={backend}"
    if precision != "fp32":  # likewise: fp32 folders (openvino's default before bf16) keep theirs
        where += f"\0precision={precision}"
    tag = hashlib.sha256(where.encode()).hexdigest()[:10]
    size = f"{height or 'default'}x{width or 'default'}"
    return cache_root() / "engines" / f"{slug}-{tag}-{size}-b{max_batch}"


def build_cached(
    model: str, height: int | None = None, width: int | None = None, batch: int = 1, log: Any = None,
    variant: str | None = None, loras: tuple[LoraSpec, ...] = (), config: str | None = None,
    vae: str | None = None,
    backend: str = "onnxruntime",
    controlnets: tuple[ControlNetSpec, ...] = (),
    precision: str | None = None,
) -> Path:
    """Build (or reuse) ONNX Runtime (``backend="openvino"``: OpenVINO) engines for ``model``
    (its weights ``variant``, with ``loras`` fused; a single file with the configs of ``config``)
    in the cache; returns the folder. ``precision``: fp32, or bf16 with openvino; by default the
    backend's (``build_config.build_precision``: openvino runs bf16 where the CPU has native bf16).
    ``batch`` images of ``height`` x ``width`` are sized against the memory limit first, so an
    absurd request never starts a build."""
    default = check_cached_request(model, height, width, batch, variant, config)
    # The model's default size asked for by number (a replayed PNG records it) is the default
    # build: one cache folder, not a second build of the same engines.
    height, width = (None if side == default else side for side in (height, width))
    max_batch = max(DEFAULT_MAX_BATCH, batch)
    precision = build_precision(backend, "cpu", precision)
    folder = cached_engines_folder(model, height, width, max_batch, variant, loras, config, vae, backend, controlnets,
                                   precision)
    vae_argument = None if vae is None else str(Path(vae).expanduser().resolve())
    request = BuildConfig(model=model, out=folder, max_batch=max_batch, height=height, width=width, variant=variant,
                          loras=loras, model_config=config, vae=vae_argument, backend=backend, controlnets=controlnets,
                          precision=precision)
    build_engines(request, log=log or (lambda _msg: None))
    return folder


def check_cached_request(model: str, height: int | None, width: int | None, batch: int,
                         variant: str | None = None, config: str | None = None) -> int:
    """Refuse a request that ``build_cached``'s engines could never serve within the memory
    limit, from the model's configs alone (no weights loaded, nothing built). Returns the
    model's default image size (pixels), read on the way."""
    from answer_trt.models.info import read_model_info
    from answer_trt.models.source import resolve_model
    from answer_trt.rules import check_int, check_size

    check_int("--batch", batch)
    dims = read_model_info(resolve_model(model, variant, config).path).dims
    default = dims.default_image_size
    h = check_size("--height", height, dims.size_multiple) if height is not None else default
    w = check_size("--width", width, dims.size_multiple) if width is not None else default
    label = "" if height is not None and width is not None else "the model's default size, "
    check_memory(dims, batch, h, w, DEFAULT_PRECISION["onnxruntime"], size_label=label)
    return default


def build_engines(config: BuildConfig, log: Callable[[str], None] = print) -> BuildResult:
    """Run ``answer-trt build`` (export, engine build, manifest). The one place under
    ``answer_trt/`` that imports the export stage, and only when a build is asked for:
    the runtime owns the contract (IO spec, manifest, build request) and ``export``
    depends on it, never the reverse."""
    from answer_trt.export.build import build  # lazy by design: see the module docstring

    return build(config, log=log)
