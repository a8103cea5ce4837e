"""``--lora-dir DIR``: ``<lora:NAME:SCALE>`` tags of an A1111 prompt choose LoRA files by name.

A1111 keeps LoRAs in ``models/Lora/`` and a tag ``<lora:NAME:0.8>`` applies ``NAME.safetensors``
from there at 0.8. answer-trt fuses LoRAs when engines are built, so here the tags of a request
choose WHICH engines run: the (file, scale) set they name is passed on as ``--lora FILE:SCALE``
would be (``build_cached(..., loras=...)`` builds that set into the cache once, or finds it), and
the tags are then accepted by ``prompts.loras.check_lora_tags`` against the fused set. The tags
never reach the text encoder (``prompts.syntax.extract_extra_networks``).

Pure file-name logic: nothing here loads a LoRA (``models.lora.check_lora`` checks the files).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from answer_trt.build_config import LoraSpec
from answer_trt.errors import UserInputError
from answer_trt.prompts.loras import LORA_KINDS
from answer_trt.prompts.syntax import extract_extra_networks

LORA_SUFFIX = ".safetensors"


def check_lora_dir(folder: Path | str) -> Path:
    """``folder`` as a ``Path``, refused in one line where it is not a folder."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        what = "no such folder" if not path.exists() else "not a folder"
        raise UserInputError(f"--lora-dir {folder}: {what}: pass the folder that holds your LoRA .safetensors files "
                             "(A1111's models/Lora)")
    return path


def lora_files(folder: Path | str) -> list[Path]:
    """The LoRA files of ``folder``: its ``*.safetensors`` (not its subfolders), sorted by name."""
    path = check_lora_dir(folder)
    return sorted((p for p in path.iterdir() if p.suffix.lower() == LORA_SUFFIX and p.is_file()),
                  key=lambda p: p.name)


def tag_loras(prompts: Iterable[str | None], folder: Path | str) -> tuple[LoraSpec, ...]:
    """The LoRAs the ``<lora:NAME:SCALE>`` (or ``<lyco:...>``) tags of ``prompts`` select from
    ``folder``: ``folder/NAME.safetensors`` at SCALE (1 when none is written), in the order the
    tags first appear; a tag repeated at the same scale counts once. Raises ``UserInputError``
    for a NAME with no file in ``folder`` (the files it has are named), or one NAME at two scales.
    Tags of other kinds are left to ``check_lora_tags``, which refuses them."""
    files = {p.stem: p for p in lora_files(folder)}
    chosen: dict[str, LoraSpec] = {}
    for prompt in prompts:
        if not prompt:
            continue
        for network in extract_extra_networks(prompt)[1]:
            if network.kind not in LORA_KINDS:
                continue
            scale = network.multiplier()
            name = network.name[:-len(LORA_SUFFIX)] if network.name.lower().endswith(LORA_SUFFIX) else network.name
            file = files.get(name)
            if file is None:
                have = ", ".join(sorted(files)) or "no .safetensors file"
                raise UserInputError(f"{network.text}: --lora-dir {folder} has no {network.name}{LORA_SUFFIX} (it has "
                                     f"{have}): fix the name, or put the file there")
            before = chosen.get(file.stem)
            if before is not None:
                if not math.isclose(before.scale, scale, rel_tol=1e-9, abs_tol=1e-9):
                    raise UserInputError(f"{network.text}: {network.name} is tagged at {before.scale!r} and at "
                                         f"{scale!r}; a fused LoRA has one scale: tag it once")
                continue
            chosen[file.stem] = LoraSpec(file.resolve(), scale)
    return tuple(chosen.values())


def merged_loras(explicit: Iterable[LoraSpec], tagged: Iterable[LoraSpec]) -> tuple[LoraSpec, ...]:
    """``--lora`` adapters, then the tag-selected ones that are not the same file at the same
    scale among them (a tag may name a LoRA also given with ``--lora``)."""
    result = list(explicit)
    have = {(spec.path.expanduser().resolve(), spec.scale) for spec in result}
    for spec in tagged:
        if (spec.path, spec.scale) not in have:
            result.append(spec)
    return tuple(result)


def lora_dir_loras(folder: Path | str, explicit: Iterable[LoraSpec], prompt_syntax: str,
                   prompts: Iterable[str | None], engines: Path | str | None = None) -> tuple[LoraSpec, ...]:
    """What ``generate --lora-dir DIR`` fuses: the ``--lora`` adapters, then those the request's
    tags select (``tag_loras``). Refused in one line: ``--lora-dir`` with an ``--engines`` folder
    (its LoRAs were fused when it was built) or without A1111's prompt syntax (no tags are read)."""
    check_lora_dir(folder)
    if engines is not None:
        raise UserInputError(f"--lora-dir chooses engines built into the cache for the tags' LoRAs; {engines} was "
                             "built with its own: use --model MODEL with --lora-dir, or drop --lora-dir")
    if prompt_syntax != "a1111":
        raise UserInputError("--lora-dir selects LoRAs by <lora:NAME:SCALE> tags, which are read in A1111's prompt "
                             "syntax: add --prompt-syntax a1111")
    return merged_loras(explicit, tag_loras(prompts, folder))


def a1111_loras(folder: Path | str | None) -> list[dict[str, Any]]:
    """``GET /sdapi/v1/loras`` as A1111 answers it: one entry per file of ``folder`` (none
    without ``--lora-dir``), ``name`` (what a tag writes), ``alias``, ``path`` and ``metadata``
    (the file's safetensors ``__metadata__``: kohya's ``ss_*`` training notes, where present)."""
    if folder is None:
        return []
    return [{"name": file.stem, "alias": file.stem, "path": str(file), "metadata": _metadata(file)}
            for file in lora_files(folder)]


def _metadata(file: Path) -> dict[str, Any]:
    """The safetensors header's ``__metadata__`` (text to text), {} where it has none or is unreadable."""
    import json
    import struct

    try:
        with file.open("rb") as handle:
            size = struct.unpack("<Q", handle.read(8))[0]
            if size > 100 << 20:
                return {}
            header = json.loads(handle.read(size))
    except (OSError, ValueError, struct.error, RecursionError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}
