"""Which weights files a model folder's components load, and whether they are whole.

diffusers and transformers name a weights *variant* V (``save_pretrained(variant=V)``; what
``from_pretrained(variant=V)`` reads and ``variant="fp16"`` downloads from the hub) by putting
V before the file's extension: ``unet/diffusion_pytorch_model.fp16.safetensors``, or for
sharded weights the index ``diffusion_pytorch_model.safetensors.index.fp16.json`` (its
``_add_variant``). The choice follows diffusers' ``DiffusionPipeline.from_pretrained(variant=V)``
for a local folder: each component loads its V files where it has them and its plain files
otherwise. A folder whose weights are stored only as one variant (what a ``variant="fp16"``
download holds) loads as if that variant had been asked for.

Only names and safetensors headers are read here, no tensors. Errors are ``UserInputError``
naming the file and the fix.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

from answer_trt.errors import UserInputError
from answer_trt.models.info import RESAVE, read_json_object
from answer_trt.rules import VARIANT_NAME, check_variant

# The weights file each component's from_pretrained loads (without a variant).
WEIGHT_NAMES = {
    "text_encoder": "model",
    "text_encoder_2": "model",
    "unet": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
}
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
MAX_SAFETENSORS_HEADER = 100 << 20  # the format's own cap on the JSON header
_SHARD_SUFFIX = re.compile(r"-\d+-of-\d+$")  # `diffusion_pytorch_model.fp16-00001-of-00002.safetensors`


def weight_file(folder: Path, stem: str, variant: str | None) -> Path:
    """The single weights file of ``variant`` (None: the plain one) in a component folder."""
    return folder / (f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors")


def index_file(folder: Path, stem: str, variant: str | None) -> Path:
    """The shard index of ``variant`` (None: the plain one) in a component folder."""
    return folder / (f"{stem}.safetensors.index.{variant}.json" if variant else f"{stem}.safetensors.index.json")


def _has(folder: Path, stem: str, variant: str | None) -> bool:
    return weight_file(folder, stem, variant).is_file() or index_file(folder, stem, variant).is_file()


def stored_variants(folder: Path, stem: str) -> set[str]:
    """The variants whose safetensors weights (a single file or a shard index) ``folder`` holds."""
    single = re.compile(re.escape(stem) + r"\.([^.]+)\.safetensors")
    index = re.compile(re.escape(stem) + r"\.safetensors\.index\.([^.]+)\.json")
    found = set()
    for path in folder.iterdir() if folder.is_dir() else ():
        match = single.fullmatch(path.name) or index.fullmatch(path.name)
        if match and VARIANT_NAME.fullmatch(match[1]) and not _SHARD_SUFFIX.search(match[1]):
            found.add(match[1])
    return found


def _components(path: Path) -> list[tuple[str, Path, str]]:
    # text_encoder_2: only SDXL has one; a missing required folder is resolve_model's to name
    return [(sub, path / sub, stem) for sub, stem in WEIGHT_NAMES.items() if (path / sub).is_dir()]


def folder_variant(path: Path, variant: str | None = None) -> str | None:
    """The weights variant the model folder ``path`` loads: ``variant`` where it is asked for
    (refused where no component holds it), else the one variant that every component
    without plain weights holds (a ``variant="fp16"`` download), else None (plain weights).
    A folder whose weights are stored only as several variants is refused: the user picks."""
    components = _components(path)
    if variant is not None:
        check_variant(variant)
        if not any(_has(folder, stem, variant) for _sub, folder, stem in components):
            others = sorted(set().union(*(stored_variants(folder, stem) for _sub, folder, stem in components)))
            held = f"its variants are {', '.join(others)}: pass one of them, or" if others else \
                "it holds plain weights only:"
            raise UserInputError(f"--variant {variant}: {path} has no {variant} weights (e.g. "
                                 f"unet/diffusion_pytorch_model.{variant}.safetensors); {held} leave --variant out")
        return variant
    # Components without plain weights but with some variant (one with neither is missing
    # its weights: check_weights says so).
    lacking = [(sub, found) for sub, folder, stem in components
               if not _has(folder, stem, None) and (found := stored_variants(folder, stem))]
    if not lacking:
        return None
    shared = set.intersection(*(variants for _sub, variants in lacking))
    if len(shared) == 1:
        return shared.pop()
    if len(shared) > 1:
        options = sorted(shared)
        raise UserInputError(f"{path} holds its {', '.join(sub for sub, _v in lacking)} weights only as the variants "
                             f"{', '.join(options)}: pick one with --variant {options[0]} (or "
                             f"{', '.join('--variant ' + v for v in options[1:])})")
    return None  # check_weights names what is missing


def component_variants(path: Path, variant: str | None = None) -> dict[str, str | None]:
    """Per component folder of ``path``, the ``variant=`` its ``from_pretrained`` is given:
    the folder's variant (``folder_variant``) where the component holds it, else None
    (its plain weights), as diffusers' pipeline loading does."""
    chosen = folder_variant(path, variant)
    return {sub: chosen if chosen and _has(folder, stem, chosen) else None for sub, folder, stem in _components(path)}


def check_weights(path: Path, variant: str | None = None) -> str | None:
    """Every component's safetensors weights (of the variant ``component_variants`` picks)
    are there and whole, or a ``UserInputError`` names the file and what is wrong. Pickle
    weights (``.bin``) are refused: loading them can run code. Only headers are read, no
    tensors. Returns the folder's variant (``folder_variant``)."""
    chosen = folder_variant(path, variant)
    for sub, own in component_variants(path, chosen).items():
        folder, stem = path / sub, WEIGHT_NAMES[sub]
        single, index = weight_file(folder, stem, own), index_file(folder, stem, own)
        if single.exists():
            check_safetensors(single)
        elif index.exists():
            for shard in _shards(index):
                check_safetensors(shard)
        else:
            raise UserInputError(_missing_weights(folder, stem, chosen))
    return chosen


def _missing_weights(folder: Path, stem: str, chosen: str | None) -> str:
    expected = weight_file(folder, stem, None)
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickles:
        return (f"{folder / pickles[0]} is a pickle weights file, which answer-trt does not load (it can run code): "
                f"convert the model to safetensors (save_pretrained(..., safe_serialization=True)) so that "
                f"{expected.name} is there")
    others = sorted(stored_variants(folder, stem))
    if others:
        asked = f", and so is its {chosen} variant" if chosen else ""
        return (f"{expected} is missing{asked}; {folder.name} holds only the variant(s) {', '.join(others)}: pass "
                f"--variant {others[0]} (components without it load their plain weights), or {RESAVE}")
    return f"{expected} is missing (the {folder.name} weights): {RESAVE}"


def _shards(index: Path) -> list[Path]:
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserInputError(f"{index}: weight_map must be a non-empty JSON object of tensor -> shard file: {RESAVE}")
    shards = []
    for name in sorted({str(v) for v in weight_map.values()}):
        if "/" in name or "\\" in name or name.startswith("."):
            raise UserInputError(f"{index}: shard {name!r} must be a file name in the same folder: {RESAVE}")
        shard = index.parent / name
        if not shard.exists():
            raise UserInputError(f"{shard} is missing (listed in {index.name}): {RESAVE}")
        shards.append(shard)
    return shards


def check_safetensors(file: Path) -> dict[str, Any]:
    """A safetensors file whose header parses and whose tensors fit in the file (a
    truncated download fails here, not deep inside from_pretrained). Returns the header:
    tensor name -> ``{"dtype", "shape", "data_offsets"}`` (and ``"__metadata__"``)."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            head = f.read(8)
            header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 0 < header_len <= min(MAX_SAFETENSORS_HEADER, size - 8):
                raise ValueError(f"its header length is impossible for a {size}-byte file")
            header = json.loads(f.read(header_len))
    except OSError as exc:
        raise UserInputError(f"{file} cannot be read ({exc.strerror or exc}): {RESAVE}") from None
    except (ValueError, RecursionError) as exc:
        raise UserInputError(f"{file} is not a safetensors file or is truncated ({exc}): {RESAVE}") from None
    if not isinstance(header, dict):
        raise UserInputError(f"{file} has a safetensors header that is not a JSON object: {RESAVE}")
    offsets = [entry.get("data_offsets") for key, entry in header.items()
               if key != "__metadata__" and isinstance(entry, dict)]
    data = size - 8 - header_len
    end = max((o[1] for o in offsets if isinstance(o, list) and len(o) == 2 and isinstance(o[1], int)), default=0)
    if end > data:
        raise UserInputError(f"{file} is truncated: its tensors need {end} bytes of data and it holds {data}; "
                             f"download or save it again")
    return header
