"""AUTOMATIC1111's "infotext": the generation parameters as A1111 writes them into a PNG's
``parameters`` text chunk, which PNG readers (A1111's PNG Info, sd-parsers, model sites'
uploaders) show. answer-trt's own record, the JSON that replay reads, is in a chunk of its
own (``RECORD``).

The format (A1111's ``create_infotext`` / ``parse_generation_parameters``)::

    a red circle
    Negative prompt: a blue square
    Steps: 30, Sampler: Euler a, CFG scale: 7.5, Seed: 5, Size: 512x512, Model: tiny, Clip skip: 2

The last line is ``Key: value`` pairs joined by ``", "``; a value holding a comma, a colon or
a quote is written as a JSON string. answer-trt's fields without an A1111 name follow A1111's
as further pairs (``Method: answer``, ``Negative scale: 1.0``, ...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from answer_trt.samplers import a1111_name, a1111_name_of_class

# The chunk that holds answer-trt's record (JSON): what replay reads first.
RECORD = "answer-trt"

# answer-trt field -> A1111's key, in A1111's order. The scheduler becomes "Sampler" (by name).
A1111_KEYS = {"steps": "Steps", "scheduler": "Sampler", "guidance_scale": "CFG scale", "seed": "Seed",
              "clip_skip": "Clip skip", "model_hash": "Model hash", "model": "Model", "batch": "Batch size",
              "batch_index": "Batch pos", "strength": "Denoising strength", "mask_blur": "Mask blur",
              "vae_hash": "VAE hash", "vae": "VAE"}
# A1111's "Model hash" is its short hash: the first 10 hex digits of the checkpoint's sha256.
A1111_HASH_DIGITS = 10
# Fields not written: the prompts (their own lines), the size (as "Size"), and the record's own.
_SKIPPED = {"prompt", "negative_prompt", "height", "width", "seeds"}
_PAIR = re.compile(r'\s*([^,:]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def _key(name: str) -> str:
    """``negative_scale`` -> ``Negative scale``: answer-trt's own fields in A1111's style."""
    return A1111_KEYS.get(name) or name.replace("_", " ").capitalize()


def _value(value: Any) -> str:
    text = "" if value is None else str(value)
    return json.dumps(text) if any(c in text for c in ',:"') else text


def infotext(record: Mapping[str, Any]) -> str:
    """A1111's infotext of an image's ``record`` (answer-trt's parameters, as JSON holds them):
    the prompt, the negative prompt (where given), then the pairs. An image of a batch drawn
    with per-image ``seeds`` shows its own seed."""
    lines = [str(record.get("prompt", ""))]
    if record.get("negative_prompt"):
        lines.append(f"Negative prompt: {record['negative_prompt']}")
    values = {k: v for k, v in record.items() if k not in _SKIPPED and v is not None}
    seeds, index = record.get("seeds"), record.get("batch_index")
    if isinstance(seeds, list) and isinstance(index, int) and 0 <= index < len(seeds):
        values["seed"] = seeds[index]
    if "scheduler" in values:
        values["scheduler"] = a1111_name(str(values["scheduler"]))
    elif "scheduler_class" in values:  # the model's own: A1111's name where one plain entry runs that class
        values["scheduler"] = a1111_name_of_class(str(values["scheduler_class"]))
    if values.get("clip_skip") == 1:  # A1111 writes it only where it skips
        values.pop("clip_skip")
    for hashed in ("model_hash", "vae_hash"):
        if isinstance(values.get(hashed), str):
            values[hashed] = values[hashed][:A1111_HASH_DIGITS]
    if values.get("mask_blur") == 0:  # A1111 writes it only for a mask
        values.pop("mask_blur")
    if values.get("control_guidance_start") == 0.0 and values.get("control_guidance_end") == 1.0:
        values.pop("control_guidance_start")  # the whole schedule: nothing to say (no ControlNet, or all steps)
        values.pop("control_guidance_end")
    if values.get("guess_mode") is False:  # ControlNet's guess mode off: nothing to say
        values.pop("guess_mode")
    if values.get("batch") == 1:
        values.pop("batch")
        values.pop("batch_index", None)
    pairs = [(A1111_KEYS[k], values.pop(k)) for k in list(A1111_KEYS) if k in values]
    if "height" in record and "width" in record:
        pairs.insert(min(4, len(pairs)), ("Size", f"{record['width']}x{record['height']}"))
    pairs += [(_key(k), v) for k, v in sorted(values.items())]
    lines.append(", ".join(f"{key}: {_value(value)}" for key, value in pairs))
    return "\n".join(lines)


def parse_infotext(text: str, kinds: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The request fields of an A1111 infotext, and the keys answer-trt does not honour (in
    the text's order). ``kinds``: the request schema's fields and their kinds (``"int"``,
    ``"float"``, ``"str"``, ...), which type the values. Fields: prompt, negative_prompt,
    steps, scheduler (A1111's sampler name), guidance_scale, seed, width/height, clip_skip,
    and answer-trt's own keys."""
    lines = text.strip("\n").split("\n")
    last = lines[-1] if len(lines) > 1 and _PAIR.match(lines[-1]) and ":" in lines[-1] else ""
    body = lines[:-1] if last else lines
    negative = [i for i, line in enumerate(body) if line.startswith("Negative prompt:")]
    cut = negative[0] if negative else len(body)
    fields: dict[str, Any] = {"prompt": "\n".join(body[:cut])}
    if negative:
        fields["negative_prompt"] = "\n".join(body[cut:])[len("Negative prompt:"):].strip()
    by_key = {v: k for k, v in A1111_KEYS.items()}
    own = {_key(name): name for name in kinds}
    ignored: list[str] = []
    for key, raw in _PAIR.findall(last):
        key = key.strip()
        value: Any = json.loads(raw) if raw.startswith('"') else raw.strip()
        if key == "Size":
            width, _, height = str(value).partition("x")
            fields["width"], fields["height"] = _typed("int", width), _typed("int", height)
            continue
        name = by_key.get(key) or own.get(key)
        if name in ("model", "batch", "batch_index"):  # what the engines are, not the request
            continue
        if name in ("vae", "vae_hash"):  # kept for the replay's check of the VAE (BuiltWeights.check_replay)
            fields[name] = str(value)
            continue
        if name is None or name not in kinds:
            ignored.append(key)
            continue
        fields[name] = _typed(kinds[name], value)
    return fields, ignored


def _typed(kind: str, value: Any) -> Any:
    """A field's value from its text, by its kind (numbers, null); text that is not a number
    stays text, for the request's own check to refuse in one line."""
    if value in ("", "None"):
        return None
    if kind == "bool":
        return {"True": True, "true": True, "False": False, "false": False}.get(value, value)
    try:
        return int(value) if kind == "int" else float(value) if kind == "float" else value
    except ValueError:
        return value
