"""LoRA adapters fused into a model's weights (``--lora FILE[:SCALE]``), before export or an
eager run.

Reading and fusing are diffusers' own, on its peft backend: for each file in turn
``load_lora_weights`` (which reads diffusers', peft's and kohya's (A1111, ComfyUI:
``lora_unet_..._to_q.lora_down.weight`` / ``lora_up.weight`` / ``alpha``) key formats itself),
``fuse_lora(lora_scale=SCALE)`` and ``unload_lora_weights()``, so that the modules exported
afterwards are plain torch modules whose weights hold ``W + SCALE * (alpha / r) * B @ A``
(UNet, and the text encoders where the file has keys for them).

What is ours: the file is checked before any model is loaded (there, a safetensors file), and
an adapter made for another architecture is refused in one line naming the file and its first
key that does not fit (diffusers would load the keys that fit and only warn about the rest, or
fail with a many-line shape error). The fit is checked on the keys as diffusers converts them
for peft (``diffusers.utils.convert_unet_state_dict_to_peft``, ``convert_state_dict_to_peft``),
against the modules and shapes of this model. Errors are ``UserInputError``.

Files in kohya's naming with the original (LDM/SGM) block names (``lora_unet_input_blocks_4_1_...``,
``middle_block``, ``output_blocks``: many SDXL LoRAs) are renamed by diffusers when it is given the
UNet's config (``lora_state_dict(unet_config=)``): we pass it for SD as for SDXL. Peft-format DoRA
(``lora_magnitude_vector`` keys) is diffusers' and peft's. What diffusers does not fuse is merged by
our own formulas (``models/lora_merge.py``): kohya-named DoRA (``dora_scale``, which diffusers
drops with only a warning), LyCORIS LoHa (``hada_*``) and LoKr (``lokr_*``). Any other format
(LoCon's ``lora_mid``, OFT, (IA)^3, an unknown key) is refused in one line naming it.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from answer_trt.build_config import LoraSpec
from answer_trt.errors import UserInputError
from answer_trt.files import sha256_file
from answer_trt.models import lora_merge
from answer_trt.models.weight_files import PICKLE_SUFFIXES, check_safetensors

TAG_DIGITS = 12  # sha256 prefix in an image's metadata (A1111's "Lora hashes" shows 12 as well)
PEFT_HINT = "pip install 'answer-trt[export]' (or pip install 'peft>=0.17.0')"


@dataclass(frozen=True)
class LoraFile:
    """A checked ``--lora``: the adapter file (resolved), its sha256 and its scale."""

    path: Path
    sha256: str
    scale: float

    @property
    def tag(self) -> str:
        """``name:sha256-prefix:scale``, what an image's metadata records of it."""
        return lora_tag(self.path.name, self.sha256, self.scale)


def lora_tag(name: str, sha256: str, scale: float) -> str:
    """What an image's metadata records of one fused adapter (``loras``: tags joined by ", ")."""
    return f"{name}:{sha256[:TAG_DIGITS]}:{scale!r}"


_TAG_KEY = re.compile(rf":([0-9a-f]{{{TAG_DIGITS}}}):([^:,]+?)(?=, |$)")


def lora_tag_keys(text: str) -> list[tuple[str, float]]:
    """(sha256 prefix, scale) of each ``lora_tag`` in ``text`` (the names left aside: a file
    may be renamed); what a replay compares."""
    keys = []
    for digest, scale in _TAG_KEY.findall(text):
        try:
            keys.append((digest, float(scale)))
        except ValueError:
            keys.append((digest, math.nan))
    return keys


def check_lora(spec: LoraSpec) -> LoraFile:
    """``spec``'s file, checked (there, a whole safetensors file; pickles are refused: loading
    them can run code) and hashed; raises ``UserInputError`` in one line naming the file."""
    path = spec.path.expanduser()
    if not path.exists():
        raise UserInputError(f"--lora {spec.path}: no such file: pass the path of a LoRA .safetensors file "
                             "(FILE or FILE:SCALE)")
    if path.is_dir():
        raise UserInputError(f"--lora {spec.path} is a folder: pass the LoRA's .safetensors file in it")
    if not path.is_file():
        raise UserInputError(f"--lora {spec.path} is not a regular file (a device or a FIFO): pass the LoRA's "
                             ".safetensors file")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UserInputError(f"--lora {spec.path} is a pickle file, which answer-trt does not load (it can run code): "
                             "use the adapter's .safetensors file")
    check_safetensors(path)
    check_finite_tensors(path, f"--lora {spec.path}")
    return LoraFile(path.resolve(), sha256_file(path), spec.scale)


def check_finite_tensors(path: Path, flag: str) -> None:
    """Refuse, before any model is loaded, a safetensors file with a NaN or infinite value in a
    floating tensor (fused, it would turn every image black), naming the first such tensor."""
    import torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            tensor = handle.get_tensor(key)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise UserInputError(f"{flag}: tensor {key!r} holds NaN or infinite values: the adapter is broken; "
                                     "use another copy of it")


def fuse_loras(loras: Sequence[LoraFile], *, unet: Any, vae: Any, text_encoder: Any,
               text_encoder_2: Any = None) -> None:
    """Fuse each adapter into the given torch modules in place, in order, through diffusers'
    pipeline LoRA methods (see the module docstring); afterwards the modules hold no adapter
    layers. ``text_encoder_2``: SDXL's (None for SD 1.x / 2.x)."""
    if not loras:
        return
    if importlib.util.find_spec("peft") is None:
        raise UserInputError(f"--lora needs peft (diffusers' LoRA loading runs on it): {PEFT_HINT}")
    pipe = _carrier(unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2)
    components = {name: module for name, module in
                  (("unet", unet), ("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2))
                  if module is not None}
    for index, lora in enumerate(loras):
        keys = _file_keys(lora.path)
        _check_format(lora.path, keys)
        if lora_merge.needs_own_merge(keys):
            from safetensors.torch import load_file

            lora_merge.merge_file(lora.path, load_file(str(lora.path)), components, lora.scale)
        else:
            _fuse_one(pipe, lora, f"answer_trt_{index}", components, keys)


def _check_format(file: Path, keys: list[str]) -> None:
    """Refuse, in one line naming the format or the first key, a file in no format that
    diffusers or ``lora_merge`` fuses whole: diffusers would drop what it does not read (kohya
    ``dora_scale`` keys, SGM block names beside diffusers' ones) and fuse the rest."""
    kohya = [key for key in keys if lora_merge.is_kohya(key)]
    unsupported = lora_merge.unsupported_format(kohya)
    if unsupported is not None:
        key, why = unsupported
        raise UserInputError(f"--lora {file}: key {key}: {why}: pass a LoRA or DoRA (diffusers', peft's or "
                             "kohya's format), LoHa or LoKr adapter")
    markers = (lora_merge.DORA_FIELD, "hada_", "lokr_", "oft_")
    other = next((key for key in keys if not lora_merge.is_kohya(key) and any(m in key for m in markers)), None)
    if other is not None:
        raise UserInputError(f"--lora {file}: key {other}: a DoRA / LyCORIS key outside kohya's naming "
                             "(lora_unet_..., lora_te_...), which answer-trt does not read: pass the adapter in "
                             "kohya's or peft's format")
    mixed = lora_merge.mixed_block_names(kohya)
    if mixed is not None:
        raise UserInputError(f"--lora {file}: key {mixed} uses the original UNet block names (input_blocks, "
                             "middle_block, output_blocks) where other keys use diffusers' (down_blocks, mid_block, "
                             "up_blocks): pass an adapter with one naming")


def _fuse_one(pipe: Any, lora: LoraFile, name: str, components: Mapping[str, Any], keys: list[str]) -> None:
    """Check that ``lora`` fits, then load it as adapter ``name``, fuse it with its scale and
    unload the adapter layers (the fused weights stay)."""
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin

    magnitudes = [key for key in keys if MAGNITUDE in key]
    if any(not key.startswith("unet.") for key in magnitudes):
        where: dict[str, Any] = {"pretrained_model_name_or_path_or_dict": _text_dora_named(lora.path)}
    else:
        # A folder and the file's name in it: diffusers 0.30 reads a bare file path offline only so.
        where = {"pretrained_model_name_or_path_or_dict": str(lora.path.parent), "weight_name": lora.path.name}
    # The UNet's config lets diffusers rename kohya keys with the original block names
    # (input_blocks, ...); SDXL's load_lora_weights passes it itself, SD's forwards ours.
    config = {"unet_config": components["unet"].config}
    forwarded = {} if isinstance(pipe, StableDiffusionXLLoraLoaderMixin) else config
    state_dict = _diffusers_call(lora, lambda: type(pipe).lora_state_dict(**_copied(where), **config)[0])
    check_fits(lora.path, state_dict, components)

    def fuse() -> None:
        pipe.load_lora_weights(**_copied(where), adapter_name=name, **forwarded)
        _check_magnitudes(lora.path, magnitudes, components, name)
        pipe.fuse_lora(lora_scale=lora.scale)
        pipe.unload_lora_weights()

    _diffusers_call(lora, fuse)


MAGNITUDE = ".lora_magnitude_vector"  # peft's DoRA magnitudes (one value per output channel)


def _copied(where: dict[str, Any]) -> dict[str, Any]:
    """``where`` with a state dict in it copied (diffusers' kohya renaming pops from it)."""
    given = where["pretrained_model_name_or_path_or_dict"]
    return {**where, "pretrained_model_name_or_path_or_dict": dict(given)} if isinstance(given, dict) else where


def _text_dora_named(file: Path) -> dict[str, Any]:
    """A peft-format DoRA file's tensors, its text encoders' magnitudes named ``...magnitude_vector
    .weight``: transformers' ``load_adapter`` (diffusers 0.42, transformers 5) leaves a
    ``lora_magnitude_vector`` key without ``.weight`` unloaded and the magnitude at its initial
    value, with no error (the UNet's go through peft, which reads them as they are)."""
    from safetensors.torch import load_file

    return {(key + ".weight" if key.endswith(MAGNITUDE) and not key.startswith("unet.") else key): tensor
            for key, tensor in load_file(str(file)).items()}


def _check_magnitudes(file: Path, keys: list[str], components: Mapping[str, Any], name: str) -> None:
    """Refuse the file where a DoRA magnitude of it (``keys``) is not what peft's layer holds
    after loading: fused so, the adapter would be a different one, silently."""
    if not keys:
        return
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        for key in keys:
            component, _dot, path = key.split(MAGNITUDE)[0].partition(".")
            module = components.get(component)
            if module is not None and not hasattr(module, "text_model"):
                path = path.removeprefix("text_model.")
            try:
                loaded = None if module is None else module.get_submodule(path).lora_magnitude_vector[name].weight
            except (AttributeError, KeyError):
                loaded = None
            wanted = handle.get_tensor(key)
            if loaded is None or not _close(loaded.detach().float().flatten(), wanted.float().flatten()):
                raise UserInputError(f"--lora {file}: diffusers did not load the DoRA magnitude {key}: answer-trt "
                                     "cannot fuse this peft-format DoRA adapter whole with these library versions; "
                                     "pass it in kohya's format (lora_down / lora_up / dora_scale)")


def _close(a: Any, b: Any) -> bool:
    """Whether two magnitude tensors hold the same values (float32; the file may be fp16)."""
    import torch

    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-3, atol=1e-6))


def _carrier(*, unet: Any, vae: Any, text_encoder: Any, text_encoder_2: Any) -> Any:
    """A diffusers pipeline holding the modules, for its LoRA methods only (never run)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    # The constructors check their scheduler's options (diffusers 0.30): one they accept.
    scheduler = DDIMScheduler(steps_offset=1, clip_sample=False)
    if text_encoder_2 is not None:
        return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                         tokenizer=None, tokenizer_2=None, unet=unet, scheduler=scheduler,
                                         add_watermarker=False)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=None, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _diffusers_call(lora: LoraFile, call: Any) -> Any:
    """``call()``, with whatever diffusers or peft raise about the file as one line naming it."""
    try:
        return call()
    except (UserInputError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - a user's file meets the libraries' loaders here
        lines = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__
        raise UserInputError(f"--lora {lora.path}: diffusers could not load it as a LoRA for this model ({detail}): "
                             "pass a LoRA in diffusers', peft's or kohya's (A1111, ComfyUI) format made for this "
                             "model") from None


def check_fits(file: Path, state_dict: Mapping[str, Any], components: Mapping[str, Any]) -> None:
    """Refuse ``state_dict`` (``lora_state_dict``'s output: keys prefixed with their component)
    where a key names no module of its component, a component this model lacks, or a
    module whose shape it does not fit; the message names the file's own key for it."""
    grouped: dict[str, dict[str, Any]] = {}
    unfit: list[tuple[str, str]] = []  # (diffusers' key, why)
    for key, tensor in state_dict.items():
        component, _dot, rest = key.partition(".")
        if component not in components:
            unfit.append((key, f"this model has no {component}" if component.startswith(("unet", "text_encoder"))
                          else f"it belongs to none of {', '.join(components)}"))
        else:
            grouped.setdefault(component, {})[rest] = tensor
    for component, weights in grouped.items():
        module = components[component]
        for key, why in _unfit_keys(_peft_keys(component, weights, module), module):
            unfit.append((f"{component}.{key}", why))
    if not unfit:
        return
    file_keys = _file_keys(file)
    shown = sorted(((_file_key(key, file_keys), why) for key, why in unfit),
                   key=lambda item: file_keys.index(item[0]) if item[0] in file_keys else len(file_keys))
    (first, why), more = shown[0], len(shown) - 1
    name = first if first in file_keys else f"{first} (as diffusers converts it)"
    also = f"; {more} more key{'s do' if more != 1 else ' does'} not fit either" if more else ""
    raise UserInputError(f"--lora {file}: key {name} does not fit this model ({why}){also}: the adapter was made "
                         "for another model; pass a LoRA trained for this one")


def _peft_keys(component: str, weights: dict[str, Any], module: Any) -> dict[str, Any]:
    """``weights`` (one component's, its prefix removed) with the keys diffusers hands to peft."""
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    if component == "unet":
        return weights if "lora_A" in next(iter(weights)) else convert_unet_state_dict_to_peft(weights)
    converted = convert_state_dict_to_peft(convert_state_dict_to_diffusers(weights))
    if not hasattr(module, "text_model"):  # transformers 5's flat CLIP text model, as diffusers maps it
        converted = {key.removeprefix("text_model."): value for key, value in converted.items()}
    return converted


def _unfit_keys(weights: Mapping[str, Any], module: Any) -> list[tuple[str, str]]:
    """The keys of ``weights`` (peft's ``<module>.lora_A.weight`` form) whose module ``module``
    lacks, or whose shape its module does not take; keys of other forms are diffusers' to judge."""
    modules = dict(module.named_modules())
    unfit = []
    for key, tensor in weights.items():
        at = key.find(".lora_")
        if at < 0:
            continue
        path, kind = key[:at], key[at + 1:].split(".")[0]
        target = modules.get(path)
        if target is None:
            unfit.append((key, f"there is no module {path}"))
            continue
        shape = tuple(getattr(tensor, "shape", ()))
        width = {"lora_A": _inputs(target), "lora_B": _outputs(target)}.get(kind)
        index = 1 if kind == "lora_A" else 0
        if width is not None and len(shape) >= 2 and shape[index] != width:
            side = "inputs" if kind == "lora_A" else "outputs"
            unfit.append((key, f"shape {list(shape)}, where {path} has {width} {side}"))
    return unfit


def _inputs(module: Any) -> int | None:
    return getattr(module, "in_features", None) or getattr(module, "in_channels", None)


def _outputs(module: Any) -> int | None:
    return getattr(module, "out_features", None) or getattr(module, "out_channels", None)


def _file_keys(file: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        return list(handle.keys())


def _flat(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _file_key(key: str, file_keys: Sequence[str]) -> str:
    """The file's own name for diffusers' ``key`` (``unet.down_blocks.0...to_q.lora_A.weight``):
    a key of the same component whose letters and digits hold the module path followed by
    ``lora`` (a kohya ``lora_unet_down_blocks_0_..._to_q.lora_down.weight`` as much as a
    diffusers key), the one of the same side (down / A, up / B) first; ``key`` itself where
    none does (kohya's SDXL names, ``input_blocks_4_1_...``, are renamed by diffusers)."""
    at = key.find(".lora_")
    if at < 0:
        return key
    component, _dot, module = key[:at].partition(".")
    wanted = _flat(module) + "lora"
    matches = [k for k in file_keys if wanted in _flat(k) and _component_of(k) in (component, None)]
    down = key[at + 1:].startswith("lora_A")
    same_side = [k for k in matches if (("down" in k or "lora_A" in k) if down else ("up" in k or "lora_B" in k))]
    return (same_side or matches or [key])[0]


def _component_of(file_key: str) -> str | None:
    """The component a file key names by its prefix (diffusers' ``unet.`` / ``text_encoder_2.``,
    kohya's ``lora_unet_`` / ``lora_te_`` / ``lora_te1_`` / ``lora_te2_``), or None."""
    flat = _flat(file_key)
    for prefixes, component in ((("unet", "loraunet"), "unet"), (("textencoder2", "lorate2"), "text_encoder_2"),
                                (("textencoder", "lorate"), "text_encoder")):
        if flat.startswith(prefixes):
            return component
    return None
