"""Prompt -> token ids -> text conditions, with c_0 (the empty prompt) cached."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from answer_trt.backends.base import Engine
from answer_trt.conditioning import TextCondition
from answer_trt.iospec import CLIP_SKIP, POOLED_EMBEDDINGS, TEXT_EMBEDDINGS, input_ids_name

log = logging.getLogger("answer_trt")


class PromptEncoder:
    """Encodes a prompt and its negative (a user negative prompt, or the empty prompt
    c_0) in one text-engine call; c_0 is computed once and reused. With
    ``zero_empty_negative`` (SDXL), c_0 is all zeros, as in diffusers' SDXL pipeline.

    Safe to share between threads: Hugging Face tokenizers are not, so one lock covers
    tokenization, the engine call and the c_0 cache."""

    def __init__(
        self, tokenizers: Sequence[Any], engine: Engine, max_length: int, zero_empty_negative: bool = False
    ) -> None:
        self.tokenizers = tuple(tokenizers)
        self.engine = engine
        self.max_length = max_length
        self.zero_empty_negative = zero_empty_negative
        self._empty: dict[int, TextCondition] = {}  # c_0 per clip skip
        self._lock = threading.Lock()

    def tokenize(self, texts: list[str], clip_skip: int = 1) -> dict[str, Tensor]:
        """The text engine's feeds for ``texts``: token ids per tokenizer, and ``clip_skip`` per row."""
        with self._lock:
            return self._tokenize(texts, clip_skip)

    def _tokenize(self, texts: list[str], clip_skip: int = 1) -> dict[str, Tensor]:
        for which, text in zip(("prompt", "negative prompt"), texts):
            ids = self.tokenizers[0](text).input_ids
            if len(ids) > self.max_length:
                # What the model never sees: the tokens past the limit (less the end-of-text token).
                # (CLIP's BPE marks word ends with </w>; a tokenizer file without its decoder keeps them.)
                dropped = " ".join(self.tokenizers[0].decode(ids[self.max_length - 1:-1]).replace("</w>", " ").split())
                log.warning("the %s is %d tokens, truncated to the model's limit of %d: %r is dropped (shorten "
                            "the %s to keep it)", which, len(ids), self.max_length, dropped, which)
        feeds = {
            input_ids_name(i): torch.from_numpy(
                tokenizer(texts, padding="max_length", max_length=self.max_length, truncation=True,
                          return_tensors="np").input_ids
            ).to(torch.int64)
            for i, tokenizer in enumerate(self.tokenizers)
        }
        feeds[CLIP_SKIP] = torch.full((len(texts),), clip_skip, dtype=torch.int64)
        return feeds

    def _run(self, texts: list[str], clip_skip: int = 1) -> list[TextCondition]:
        out = self.engine.run(self._tokenize(texts, clip_skip))
        hidden = out[TEXT_EMBEDDINGS].to(torch.float32)
        pooled = out[POOLED_EMBEDDINGS].to(torch.float32) if POOLED_EMBEDDINGS in out else None
        return [
            TextCondition(hidden[i : i + 1], None if pooled is None else pooled[i : i + 1]) for i in range(len(texts))
        ]

    def encode(self, prompt: str, negative_prompt: str | None = None,
               clip_skip: int = 1) -> tuple[TextCondition, TextCondition]:
        """``(c_p, c_neg)``, one row each; ``c_neg`` is c_0 when no negative prompt is given.
        ``clip_skip`` (A1111's; 1: the last layer) applies to both."""
        with self._lock:
            return self._encode(prompt, negative_prompt, clip_skip)

    def _encode(self, prompt: str, negative_prompt: str | None,
                clip_skip: int) -> tuple[TextCondition, TextCondition]:
        if negative_prompt is not None:
            positive, negative = self._run([prompt, negative_prompt], clip_skip)
            return positive, negative
        if clip_skip in self._empty:
            return self._run([prompt], clip_skip)[0], self._empty[clip_skip]
        if self.zero_empty_negative:
            (positive,) = self._run([prompt], clip_skip)
            pooled = None if positive.pooled is None else torch.zeros_like(positive.pooled)
            self._empty[clip_skip] = TextCondition(torch.zeros_like(positive.hidden), pooled)
        else:
            positive, self._empty[clip_skip] = self._run([prompt, ""], clip_skip)
        return positive, self._empty[clip_skip]
