"""``--vae FILE|DIR``: the model's VAE replaced, as A1111 users swap in a fixed VAE.

Two kinds of source:
- a diffusers ``AutoencoderKL`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``),
  loaded with ``AutoencoderKL.from_pretrained``;
- a single ``.safetensors`` VAE file, A1111's ``models/VAE/*.safetensors``: the original (LDM) key
  layout (``encoder.down.0.block.0...``, ``decoder.up...``, ``quant_conv``, ``post_quant_conv``) or
  diffusers' own (``encoder.down_blocks...``), loaded with diffusers'
  ``AutoencoderKL.from_single_file(path, config=<the model's folder>, subfolder="vae")``: the model's
  own VAE config gives the architecture, so nothing is fetched.

Checked before anything is built (one line each, ``UserInputError``): a missing or truncated file,
a pickle (``.ckpt``/``.pt``: never unpickled), a LoRA or a whole checkpoint given as a VAE, and a
VAE of another latent channel count or family (its ``latent_channels`` and ``block_out_channels``
against the model's; a folder's ``scaling_factor`` too). The content hash (``sha256``: of the file,
or of a folder's config and weights) goes into the build key, the manifest and each PNG (A1111's
"VAE hash" is its first 10 digits).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from answer_trt.errors import UserInputError
from answer_trt.files import read_bounded, sha256_file
from answer_trt.models.weight_files import PICKLE_SUFFIXES, check_safetensors

VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"
# Prefixes a VAE extracted from a checkpoint may keep (diffusers' LDM_VAE_KEYS strips them too).
_VAE_PREFIXES = ("first_stage_model.", "vae.")
# Keys that only a whole checkpoint has: its UNet and text encoder(s).
_CHECKPOINT_KEYS = ("model.diffusion_model.", "cond_stage_model.", "conditioner.", "unet.", "text_encoder.")
_LORA_KEY = re.compile(r"(^lora_|\.lora[._]|lora_down|lora_up|\.lora_[AB]\.|\.alpha$|dora_scale|hada_|lokr_)")
_LEVEL = re.compile(r"^encoder\.down(?:_blocks)?\.(\d+)\.")


@dataclass(frozen=True)
class VaeFile:
    """A checked ``--vae``: ``path`` (resolved), ``sha256`` (of the file, or of a folder's
    config and weights files) and ``layout``: ``folder`` (diffusers), ``ldm`` or ``diffusers``
    (a single file's key layout)."""

    path: Path
    sha256: str
    layout: str

    @property
    def name(self) -> str:
        """What A1111's infotext calls the VAE ("VAE: name.safetensors")."""
        return self.path.name


def check_vae(vae: str | Path, model_path: Path) -> VaeFile:
    """``vae`` checked against the model folder ``model_path`` (its ``vae/config.json``) and
    hashed; ``UserInputError`` in one line naming the file and what to change."""
    path = Path(vae).expanduser()
    if not path.exists():
        raise UserInputError(f"--vae {vae}: no such file or folder: pass a VAE .safetensors file (A1111's models/VAE) "
                             "or a diffusers AutoencoderKL folder")
    if path.suffix.lower() in PICKLE_SUFFIXES and not path.is_dir():
        raise UserInputError(f"--vae {vae} is a pickle file, which answer-trt does not load (it can run code): use the "
                             "VAE's .safetensors file")
    model = _config(model_path / "vae" / "config.json", "the model's VAE config")
    if path.is_dir():
        return _check_folder(path, str(vae), model)
    if not path.is_file():
        raise UserInputError(f"--vae {vae} is not a regular file (a device or a FIFO): pass the VAE's .safetensors "
                             "file")
    if path.suffix.lower() != ".safetensors":
        raise UserInputError(f"--vae {vae}: a VAE file must be .safetensors (A1111's models/VAE/*.safetensors), or "
                             "pass a diffusers AutoencoderKL folder")
    header = check_safetensors(path)
    keys = [key for key in header if key != "__metadata__"]
    layout = _check_keys(keys, str(vae))
    shapes = {_strip(key): header[key].get("shape") for key in keys if isinstance(header[key], dict)}
    latent = _dim(shapes, "decoder.conv_in.weight", 1, vae)
    first, last = _dim(shapes, "encoder.conv_in.weight", 0, vae), _dim(shapes, "decoder.conv_in.weight", 0, vae)
    levels = len({int(m.group(1)) for key in shapes if (m := _LEVEL.match(key))})
    _check_fits(str(vae), model, latent, (first, last, levels))
    return VaeFile(path.resolve(), sha256_file(path), layout)


def _strip(key: str) -> str:
    for prefix in _VAE_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _check_keys(keys: list[str], shown: str) -> str:
    """The key layout of a VAE file (``ldm`` or ``diffusers``); a LoRA, a whole checkpoint or
    anything else refused."""
    lora = next((key for key in keys if _LORA_KEY.search(key)), None)
    if lora is not None:
        raise UserInputError(f"--vae {shown} is a LoRA adapter (key {lora!r}), not a VAE: pass it with --lora")
    whole = next((key for key in keys if key.startswith(_CHECKPOINT_KEYS)), None)
    if whole is not None:
        raise UserInputError(f"--vae {shown} is a whole checkpoint (key {whole!r}), not a VAE: pass it with --model, "
                             "and --vae the VAE file (A1111's models/VAE)")
    stripped = [_strip(key) for key in keys]
    if not {"encoder.conv_in.weight", "decoder.conv_in.weight"} <= set(stripped):
        first = sorted(keys)[0] if keys else "none"
        raise UserInputError(f"--vae {shown} is not a VAE: it lacks encoder.conv_in/decoder.conv_in (first key "
                             f"{first!r}); pass an AutoencoderKL .safetensors file or folder")
    return "diffusers" if any(key.startswith("decoder.up_blocks.") for key in stripped) else "ldm"


def _dim(shapes: dict[str, Any], key: str, axis: int, shown: str | Path) -> int:
    shape = shapes.get(key)
    if not isinstance(shape, list) or len(shape) != 4 or not all(isinstance(n, int) for n in shape):
        raise UserInputError(f"--vae {shown}: {key} has shape {shape!r}, not a 4-d convolution: not an AutoencoderKL "
                             "VAE")
    return int(shape[axis])


def _config(file: Path, what: str) -> dict[str, Any]:
    try:
        config = json.loads(read_bounded(file))
    except (OSError, ValueError, RecursionError):
        config = None
    if not isinstance(config, dict):
        raise UserInputError(f"{file} ({what}) is missing or not a JSON object")
    return config


def _check_fits(shown: str, model: dict[str, Any], latent: int, blocks: tuple[int, int, int]) -> None:
    """Refuse a VAE whose latent channels or block widths (first, last, count) are not the model's."""
    want_latent = model.get("latent_channels", 4)
    widths = model.get("block_out_channels") or []
    want = (widths[0], widths[-1], len(widths)) if widths else blocks
    if latent != want_latent:
        raise UserInputError(f"--vae {shown} makes {latent}-channel latents and the model's UNet takes {want_latent}: "
                             "it is a VAE for another model family; pass one made for this model")
    if blocks != want:
        raise UserInputError(f"--vae {shown} has blocks of {blocks[0]}..{blocks[1]} channels in {blocks[2]} levels, "
                             f"the model's VAE {want[0]}..{want[1]} in {want[2]}: it is a VAE for another model "
                             "family; pass one made for this model")


def _check_folder(path: Path, shown: str, model: dict[str, Any]) -> VaeFile:
    config_file = path / "config.json"
    if not config_file.is_file() and (path / "vae" / "config.json").is_file():
        raise UserInputError(f"--vae {shown} is a whole model folder: pass its vae/ subfolder, or the model as --model")
    config = _config(config_file, "a VAE folder's config")
    kind = config.get("_class_name", "AutoencoderKL")
    if kind != "AutoencoderKL":
        raise UserInputError(f"--vae {shown} holds a {kind}, not an AutoencoderKL VAE: pass a Stable Diffusion VAE")
    weights = path / VAE_WEIGHTS
    if not weights.is_file():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise UserInputError(f"--vae {shown}: its weights are {pickles[0]}, a pickle file, which answer-trt does "
                                 "not load (it can run code): save the VAE with "
                                 "save_pretrained(safe_serialization=True)")
        raise UserInputError(f"--vae {shown} has no {VAE_WEIGHTS}: pass a diffusers AutoencoderKL folder")
    check_safetensors(weights)
    widths = config.get("block_out_channels") or []
    blocks = (widths[0], widths[-1], len(widths)) if isinstance(widths, list) and widths else (0, 0, 0)
    _check_fits(shown, model, int(config.get("latent_channels", 4)), blocks)
    ours, theirs = float(model.get("scaling_factor", 0.18215)), float(config.get("scaling_factor", 0.18215))
    if not math.isclose(ours, theirs, rel_tol=1e-6):
        raise UserInputError(f"--vae {shown} has scaling_factor {theirs:g} and the model {ours:g}: it is a VAE for "
                             "another model family (SD 1.x/2.x: 0.18215, SDXL: 0.13025); pass one made for this model")
    return VaeFile(path.resolve(), vae_digest(path), "folder")


def vae_digest(path: Path) -> str:
    """The sha256 naming a VAE: of a file, or of a folder's ``config.json`` and weights (name and
    sha256 of each), as ``check_vae`` records it."""
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in (path / "config.json", path / VAE_WEIGHTS):
        digest.update(f"{file.name}\0{sha256_file(file)}\0".encode())
    return digest.hexdigest()


def load_vae(vae: VaeFile, model_path: Path) -> Any:
    """The ``AutoencoderKL`` of ``vae`` in float32 and eval mode (a single file with the model
    folder ``model_path``'s VAE config); ``UserInputError`` where its tensors do not cover the
    architecture or do not fit it."""
    import torch
    from diffusers import AutoencoderKL

    try:
        if vae.layout == "folder":
            model, info = AutoencoderKL.from_pretrained(vae.path, torch_dtype=torch.float32, low_cpu_mem_usage=False,
                                                        output_loading_info=True)
            missing = list(info.get("missing_keys") or []) + list(info.get("mismatched_keys") or [])
        else:
            model = _load_in_diffusers_names(vae, model_path) if vae.layout == "diffusers" else None
            if model is None:
                model = AutoencoderKL.from_single_file(str(vae.path), config=str(model_path), subfolder="vae",
                                                       local_files_only=True, torch_dtype=torch.float32,
                                                       low_cpu_mem_usage=True)
            missing = [name for name, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a user's file meets diffusers' loader: one line naming it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"--vae {vae.path} does not load as this model's VAE ({first[:200]}): pass a VAE made "
                             "for this model") from None
    if missing:
        raise UserInputError(f"--vae {vae.path} lacks {len(missing)} tensor(s) of the VAE (first {missing[0]!r}): it "
                             "is incomplete or made for another architecture")
    return model.eval()


def _load_in_diffusers_names(vae: VaeFile, model_path: Path) -> Any:
    """A file already in diffusers' names that fits the model's VAE config tensor for tensor,
    loaded as is (diffusers before 0.31 read such a file through its LDM converter and kept
    none of it); None where it does not fit exactly (older attention names or conv-shaped
    attention weights), for ``from_single_file`` to convert."""
    import torch
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    model = AutoencoderKL.from_config(AutoencoderKL.load_config(model_path / "vae"))
    state = {_strip(key): tensor for key, tensor in load_file(str(vae.path)).items()}
    expected = model.state_dict()
    if set(state) != set(expected) or any(state[key].shape != expected[key].shape for key in expected):
        return None
    model.load_state_dict({key: tensor.to(torch.float32) for key, tensor in state.items()})
    return model
