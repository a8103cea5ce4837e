"""``<lora:name:weight>`` tags of an A1111 prompt against the LoRAs fused at build time (pure).

answer-trt fuses LoRAs into the weights when the engines are built (``answer-trt build --lora
FILE:SCALE``); a prompt cannot add one. A tag that names a LoRA the engines were built with, at
the scale they were built with, is accepted (it asks for what is already there); any other
tag is refused in one line naming the build flag.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import PurePosixPath

from answer_trt.errors import UserInputError
from answer_trt.prompts.syntax import ExtraNetwork

LORA_KINDS = ("lora", "lyco")  # A1111's names of the LoRA extra network (LyCORIS: the older extension's)


def built_loras(tags: Sequence[str]) -> list[tuple[str, float]]:
    """(file name, scale) of each fused LoRA from its tag ``name:sha256-prefix:scale``
    (``answer_trt.models.lora.lora_tag``)."""
    loras = []
    for tag in tags:
        name, _digest, scale = tag.rsplit(":", 2)
        try:
            loras.append((name, float(scale)))
        except ValueError:
            loras.append((name, math.nan))
    return loras


def _matches(tag_name: str, file_name: str) -> bool:
    path = PurePosixPath(file_name.replace("\\", "/"))
    return tag_name in (path.name, path.stem)


def check_lora_tags(networks: Sequence[ExtraNetwork], built: Sequence[str], rebuild_command: str) -> None:
    """Accept each tag of ``networks`` whose LoRA the engines were built with (``built``: the
    fused LoRAs' tags) at the tag's weight; refuse any other tag, or another kind of extra
    network, in one line. ``rebuild_command``: the command that built the engines, to which
    the message adds ``--lora``."""
    loras = built_loras(built)
    for network in networks:
        if network.kind not in LORA_KINDS:
            raise UserInputError(f"{network.text}: A1111's {network.kind} extra networks are not supported by "
                                 "answer-trt; take the tag out of the prompt")
        weight = network.multiplier()
        if any(_matches(network.name, name) and math.isclose(scale, weight, rel_tol=1e-9, abs_tol=1e-9)
               for name, scale in loras):
            continue
        have = ", ".join(f"{name}:{scale!r}" for name, scale in loras) or "no LoRA"
        raise UserInputError(f"{network.text}: LoRAs are fused into the engines when they are built, and these have "
                             f"{have}; build them with it: `{rebuild_command} --lora {network.name}.safetensors:"
                             f"{weight!r}` (or take the tag out)")
