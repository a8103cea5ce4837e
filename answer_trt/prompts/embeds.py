"""Text conditions given as tensors (diffusers' ``prompt_embeds=``, what compel and similar
libraries make), checked against the model before anything runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from answer_trt.conditioning import TextCondition
from answer_trt.errors import UserInputError
from answer_trt.iospec import ModelDims

EMBED_KEYWORDS = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")


@dataclass(frozen=True)
class PromptEmbeds:
    """The positive condition, and the negative one where given (else the pipeline's c_0)."""

    positive: TextCondition
    negative: TextCondition | None
    chunks: int  # of the text encoder's length, both conditions alike


def _tensor(name: str, value: Any, shape: tuple[int | None, ...], what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise UserInputError(f"{name} must be a torch tensor {what}, got {type(value).__name__}")
    if value.dim() != len(shape) or any(want is not None and want != got for want, got in zip(shape, value.shape)):
        raise UserInputError(f"{name} has shape {list(value.shape)}; this model takes {what}")
    if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
        raise UserInputError(f"{name} must hold finite floating-point values")
    return value.detach().to("cpu", torch.float32)


def check_prompt_embeds(dims: ModelDims, max_chunks: int | None, keywords: dict[str, Any]) -> PromptEmbeds:
    """``keywords`` (diffusers' names: ``prompt_embeds`` ``[1, 77 * k, D]``, its negative of the same
    shape, and for SDXL ``pooled_prompt_embeds`` ``[1, P]`` and its negative) as text conditions;
    ``UserInputError`` in one line naming the tensor and the shape this model takes. ``k``
    chunks of the text encoder's length, at most ``max_chunks`` (None: any)."""
    length, width = dims.text_max_length, dims.text_hidden_size
    what = f"[1, {length} * k, {width}] (k chunks of {length} tokens)"
    if keywords.get("prompt_embeds") is None:
        raise UserInputError("pass prompt_embeds with negative_prompt_embeds or the pooled embeddings (or a prompt)")
    positive = _tensor("prompt_embeds", keywords["prompt_embeds"], (1, None, width), what)
    tokens = positive.shape[1]
    if tokens == 0 or tokens % length:
        raise UserInputError(f"prompt_embeds has {tokens} tokens; this model takes {what}")
    if max_chunks is not None and tokens // length > max_chunks:
        raise UserInputError(f"prompt_embeds has {tokens // length} chunks of {length} tokens, beyond the {max_chunks} "
                             "these engines were built for: rebuild with --max-prompt-chunks")
    negative = keywords.get("negative_prompt_embeds")
    if negative is not None:
        negative = _tensor("negative_prompt_embeds", negative, (1, tokens, width),
                           f"the shape of prompt_embeds, {list(positive.shape)}")
    pooled: list[torch.Tensor | None] = []
    for name in ("pooled_prompt_embeds", "negative_pooled_prompt_embeds"):
        value = keywords.get(name)
        if not dims.pooled_size:
            if value is not None:
                raise UserInputError(f"{name} is SDXL's: this model has no pooled text embedding; leave it out")
            pooled.append(None)
            continue
        if value is None and (name == "pooled_prompt_embeds" or negative is not None):
            raise UserInputError(f"this SDXL model needs {name} [1, {dims.pooled_size}] with "
                                 f"{'prompt_embeds' if name == 'pooled_prompt_embeds' else 'negative_prompt_embeds'}")
        size = dims.pooled_size
        pooled.append(None if value is None else _tensor(name, value, (1, size), f"[1, {size}]"))
    if negative is None and pooled[1] is not None:
        raise UserInputError("negative_pooled_prompt_embeds needs negative_prompt_embeds")
    return PromptEmbeds(TextCondition(positive, pooled[0]),
                        None if negative is None else TextCondition(negative, pooled[1]), tokens // length)
