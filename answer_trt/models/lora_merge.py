"""Adapters diffusers does not fuse, merged into the weights by our own formulas: kohya-named
(``lora_unet_...`` / ``lora_te_...``) files with DoRA magnitudes (``dora_scale``, which diffusers
drops with a warning), LyCORIS LoHa (``hada_w1_a`` ...) and LoKr (``lokr_w1`` ...).

Each module's weight update is a small pure function below, named after its format, with its
formula and source; ``merge_file`` resolves a file's module names against the model (kohya's
names are the module path with ``.`` as ``_``; the original LDM/SGM block names, ``input_blocks``
/ ``middle_block`` / ``output_blocks``, are renamed first by diffusers' own mapping for the UNet's
config), computes every new weight and only then writes them: a file that does not fit leaves the
model untouched. Errors are ``UserInputError`` in one line naming the file and its own key.

SCALE (``--lora FILE:SCALE``) multiplies the update as peft's ``fuse_lora(lora_scale=)`` does:
``W0 + SCALE * dW`` for LoRA, LoHa and LoKr; for DoRA SCALE scales ``dW`` inside the norm,
``m * (W0 + SCALE * dW) / ||W0 + SCALE * dW||`` (A1111 and ComfyUI instead blend the merged
weight, ``W0 + SCALE * (DoRA(W0, dW) - W0)``; the two agree at SCALE 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

from answer_trt.errors import UserInputError

KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                  "lora_te2_": "text_encoder_2"}
LORA_FIELDS = ("lora_down.weight", "lora_up.weight")
LOHA_FIELDS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR_FIELDS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
DORA_FIELD = "dora_scale"
# What a kohya-named module may carry, by field (the part of a key after the module's name).
KNOWN_FIELDS = frozenset((*LORA_FIELDS, "alpha", DORA_FIELD, *LOHA_FIELDS, "hada_t1", "hada_t2", *LOKR_FIELDS))
# Fields of adapter formats we recognize but do not fuse, and the format's name.
UNSUPPORTED_FIELDS = {
    "lora_mid.weight": "LoCon with a Tucker middle (lora_mid)",
    "oft_blocks": "OFT / BOFT (oft_blocks)", "oft_diag": "OFT (oft_diag)",
    "diff": "LyCORIS full (diff)", "diff_b": "LyCORIS full (diff_b)",
    "w_norm": "LyCORIS norm (w_norm)", "b_norm": "LyCORIS norm (b_norm)",
    "on_input": "(IA)^3 (on_input)", "a1.weight": "GLoRA (a1.weight)",
}
SGM_BLOCKS = ("input_blocks", "middle_block", "output_blocks")
DIFFUSERS_BLOCKS = ("down_blocks", "mid_block", "up_blocks")


# --- the formulas ----------------------------------------------------------------------


def lora_delta(up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """LoRA (Hu et al. 2021; kohya's ``lora_up`` = B, ``lora_down`` = A): ``dW = B @ A``, as a
    matrix ``[out, in * kernel]`` (a conv's ``down`` holds the kernel, its ``up`` is 1x1, kohya
    sd-scripts ``networks/lora.py``); the caller scales it by ``alpha / rank`` and reshapes it."""
    return up.flatten(1) @ down.flatten(1)


def _tucker(core: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """A Tucker-factored conv kernel (LyCORIS ``make_weight_cp``):
    ``W[p, r, k, l] = sum_ij core[i, j, k, l] * wa[i, p] * wb[j, r]``."""
    return torch.einsum("i j k l, i p, j r -> p r k l", core, wa, wb)


def loha_delta(w1a: torch.Tensor, w1b: torch.Tensor, w2a: torch.Tensor, w2b: torch.Tensor,
               t1: torch.Tensor | None = None, t2: torch.Tensor | None = None) -> torch.Tensor:
    """LoHa (LyCORIS ``modules/loha.py``; Hyeon-Woo et al. 2022, FedPara): the Hadamard product
    of two low-rank products, ``dW = (w1a @ w1b) * (w2a @ w2b)``; with Tucker cores ``t1``, ``t2``
    (convs) each factor is ``einsum('ijkl,ip,jr->prkl', t, wa, wb)``. Unscaled: the caller
    multiplies by ``alpha / rank`` (rank = ``w1b.shape[0]``)."""
    if t1 is not None and t2 is not None:
        return _tucker(t1, w1a, w1b) * _tucker(t2, w2a, w2b)
    return (w1a @ w1b.flatten(1)) * (w2a @ w2b.flatten(1))


def lokr_delta(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """LoKr (LyCORIS ``modules/lokr.py``; Yeh et al. 2023, "Navigating Text-To-Image
    Customization: From LyCORIS Fine-Tuning to Model Evaluation"): the Kronecker product
    ``dW = kron(w1, w2)``, ``w1`` / ``w2`` full or ``a @ b`` factored; for a conv, ``w2`` holds the
    kernel and ``w1`` is broadcast over it. Unscaled: the caller multiplies by ``alpha / rank``
    where a factor is low-rank (1 where both are full)."""
    if w2.dim() == 4 and w1.dim() == 2:
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2)


def dora_axis(weight_shape: tuple[int, ...], magnitude_shape: tuple[int, ...]) -> int | None:
    """Which axis a DoRA magnitude holds one value per, told by its shape: 0 (output channels:
    peft's ``lora_magnitude_vector`` ``[out]``, LyCORIS ``wd_on_out`` ``[out, 1, ...]``), 1 (input
    channels: LyCORIS' and the paper's column norm, ``[1, in, ...]``), or None (neither fits)."""
    count = 1
    for size in magnitude_shape:
        count *= size
    if magnitude_shape and magnitude_shape[0] == weight_shape[0] and count == weight_shape[0]:
        return 0
    if len(magnitude_shape) >= 2 and magnitude_shape[1] == weight_shape[1] and count == weight_shape[1]:
        return 1
    return None


def dora_weight(weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, axis: int) -> torch.Tensor:
    """DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation", eq. 5):
    ``W' = m * (W0 + dW) / ||W0 + dW||_c``, the norm taken over everything but ``axis`` (one norm
    per output channel for ``axis`` 0, as peft's ``DoraLinearLayer.get_weight_norm`` /
    ``DoraConv2dLayer`` do; per input channel for 1, LyCORIS' default). ``delta`` is the scaled
    update (``SCALE * alpha / rank * B @ A``), ``magnitude`` m, one value per channel of ``axis``."""
    merged = weight + delta
    dims = tuple(d for d in range(merged.dim()) if d != axis)
    norm = torch.linalg.vector_norm(merged, dim=dims, keepdim=True)
    return merged * (magnitude.reshape(norm.shape) / norm)


# --- a file's modules ------------------------------------------------------------------


@dataclass
class _Module:
    """One kohya-named module of a file: its fields' tensors and the file's own keys for them."""

    keys: dict[str, str]
    fields: dict[str, torch.Tensor]

    @property
    def key(self) -> str:
        """The file's first key of the module's weights (its ``alpha`` where it has none)."""
        return next((key for field, key in self.keys.items() if field != "alpha"), next(iter(self.keys.values())))


def unsupported_format(keys: list[str]) -> tuple[str, str] | None:
    """(first key, why) for the first key of a kohya-named file that no format here reads: a
    format we name (``UNSUPPORTED_FIELDS``) or an unrecognized field; None if all are known."""
    for key in keys:
        field = _split(key)[1]
        if field in UNSUPPORTED_FIELDS:
            return key, f"it is a {UNSUPPORTED_FIELDS[field]} adapter, which answer-trt cannot fuse"
        if field not in KNOWN_FIELDS:
            return key, "it is in no adapter format answer-trt reads"
    return None


def needs_own_merge(keys: list[str]) -> bool:
    """Whether a kohya-named file has DoRA, LoHa or LoKr modules (merged here, not by diffusers)."""
    return any(_split(key)[1] in (DORA_FIELD, *LOHA_FIELDS, *LOKR_FIELDS) for key in keys)


def is_kohya(key: str) -> bool:
    return key.startswith(tuple(KOHYA_PREFIXES))


def _split(key: str) -> tuple[str, str]:
    module, _dot, field = key.partition(".")
    return module, field


def mixed_block_names(keys: list[str]) -> str | None:
    """A key with the original (SGM) block names where others have diffusers' (diffusers would
    drop the SGM ones silently), or None."""
    sgm = [k for k in keys if any(b in k for b in SGM_BLOCKS)]
    if sgm and any(any(b in k for b in DIFFUSERS_BLOCKS) for k in keys):
        return sgm[0]
    return None


def merge_file(file: Path, state_dict: Mapping[str, torch.Tensor], components: Mapping[str, Any],
               scale: float) -> None:
    """Merge the kohya-named adapter ``state_dict`` (read from ``file``) into ``components``'
    weights in place with ``scale``; all or nothing (see the module docstring)."""
    modules = _modules(file, state_dict, components)
    table = _named_weights(components)
    updates: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    for name, module in modules.items():
        found = table.get(name)
        if found is None:
            component = KOHYA_PREFIXES[next(p for p in KOHYA_PREFIXES if name.startswith(p))]
            why = (f"this model has no {component}" if component not in components
                   else f"there is no module {name} in the {component}")
            _unfit(file, module.key, why)
        updates.append((found, _merged(file, module, found.detach(), scale)))
    with torch.no_grad():
        for weight, value in updates:
            weight.copy_(value.to(weight.dtype))


def _modules(file: Path, state_dict: Mapping[str, torch.Tensor], components: Mapping[str, Any]) -> dict[str, _Module]:
    """The file's modules by their kohya name (SGM block names renamed to diffusers')."""
    names = {key: key for key in state_dict}
    unet = components.get("unet")
    if unet is not None and any(b in key for key in names for b in SGM_BLOCKS):
        from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers

        try:
            # It renumbers (input_blocks_4_1 -> input_blocks_1_attentions_0); the block words are
            # diffusers' next step (_convert_unet_lora_key), ours here.
            names = _maybe_map_sgm_blocks_to_diffusers(dict(names), unet.config)
        except (ValueError, IndexError, KeyError) as exc:
            first = next(k for k in state_dict if any(b in k for b in SGM_BLOCKS))
            _unfit(file, first, f"its block names do not map onto this UNet: {str(exc).splitlines()[0][:200]}")
        names = {_diffusers_block_words(key): original for key, original in names.items()}
    modules: dict[str, _Module] = {}
    for renamed, original in names.items():
        module, field = _split(renamed)
        entry = modules.setdefault(module, _Module({}, {}))
        entry.keys[field] = original
        entry.fields[field] = state_dict[original].float()
    return modules


def _diffusers_block_words(key: str) -> str:
    """``lora_unet_input_blocks_1_attentions_0_...`` (renumbered SGM) as diffusers names it."""
    for sgm, ours in zip(SGM_BLOCKS, DIFFUSERS_BLOCKS):
        if key.startswith(f"lora_unet_{sgm}_"):
            return f"lora_unet_{ours}_" + key.removeprefix(f"lora_unet_{sgm}_")
    return key


def _named_weights(components: Mapping[str, Any]) -> dict[str, torch.nn.Parameter]:
    """Every Linear / Conv weight of ``components`` by the name kohya's scripts give it: prefix +
    module path with ``.`` as ``_`` (a flat CLIP text model, transformers 5, also under
    ``text_model_``, the name kohya gives it)."""
    prefixes = {"unet": ("lora_unet_",), "text_encoder": ("lora_te_", "lora_te1_"), "text_encoder_2": ("lora_te2_",)}
    table: dict[str, torch.nn.Parameter] = {}
    for component, model in components.items():
        flat = component != "unet" and not hasattr(model, "text_model")
        for path, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.nn.Parameter) or weight.dim() < 2:
                continue
            paths = (path, f"text_model.{path}") if flat else (path,)
            for prefix in prefixes.get(component, ()):
                for name in paths:
                    table[prefix + name.replace(".", "_")] = weight
    return table


def _merged(file: Path, module: _Module, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """``weight`` (W0) with ``module``'s update merged, in float32."""
    fields = module.fields
    w0 = weight.float()
    delta, rank = _delta(file, module)
    if delta.shape[0] != w0.shape[0] or delta.numel() != w0.numel():
        _unfit(file, module.key, f"its update has shape {list(delta.shape)}, where the module's weight has "
                                 f"{list(w0.shape)}")
    alpha = fields.get("alpha")
    factor = 1.0 if alpha is None or rank is None or float(alpha) == 0 else float(alpha) / rank
    delta = delta.reshape(w0.shape) * (scale * factor)
    magnitude = fields.get(DORA_FIELD)
    if magnitude is None:
        return w0 + delta
    axis = dora_axis(tuple(w0.shape), tuple(magnitude.shape))
    if axis is None:
        _unfit(file, module.keys[DORA_FIELD], f"its dora_scale has shape {list(magnitude.shape)}, one value per "
                                              f"output or input channel of the weight {list(w0.shape)} expected")
    return dora_weight(w0, delta, magnitude, axis)


def _delta(file: Path, module: _Module) -> tuple[torch.Tensor, int | None]:
    """The module's unscaled update and the rank its ``alpha`` divides by (None: no scaling)."""
    f = module.fields
    if all(name in f for name in LORA_FIELDS):
        return lora_delta(f["lora_up.weight"], f["lora_down.weight"]), f["lora_down.weight"].shape[0]
    if all(name in f for name in LOHA_FIELDS):
        return (loha_delta(f["hada_w1_a"], f["hada_w1_b"], f["hada_w2_a"], f["hada_w2_b"], f.get("hada_t1"),
                           f.get("hada_t2")), f["hada_w1_b"].shape[0])
    if any(name in f for name in LOKR_FIELDS):
        w1, rank1 = _lokr_factor(f, "lokr_w1", None)
        w2, rank2 = _lokr_factor(f, "lokr_w2", f.get("lokr_t2"))
        if w1 is not None and w2 is not None:
            return lokr_delta(w1, w2), rank2 if rank2 is not None else rank1
    _unfit(file, module.key, "its module lacks weights for any format answer-trt reads (lora_down + lora_up, "
                             "hada_w1_a/b + hada_w2_a/b, or lokr_w1 + lokr_w2 or their _a/_b factors)")


def _lokr_factor(fields: Mapping[str, torch.Tensor], name: str,
                 core: torch.Tensor | None) -> tuple[torch.Tensor | None, int | None]:
    """A LoKr factor: full (``lokr_w1``), or ``a @ b`` (``lokr_w1_a``, ``lokr_w1_b``; with a
    Tucker core for ``w2``), with the rank its ``alpha`` divides by (None where full)."""
    if name in fields:
        return fields[name], None
    a, b = fields.get(f"{name}_a"), fields.get(f"{name}_b")
    if a is None or b is None:
        return None, None
    return (_tucker(core, a, b) if core is not None else a @ b), b.shape[0]


def _unfit(file: Path, key: str, why: str) -> NoReturn:
    raise UserInputError(f"--lora {file}: key {key} does not fit this model ({why}): pass an adapter made for "
                         "this model in a format answer-trt reads (LoRA or DoRA in diffusers', peft's or kohya's "
                         "format, LyCORIS LoHa or LoKr)")
