"""Prompt -> token ids -> text embeddings, with the empty-prompt embedding cached."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from answer_trt.backends.base import Engine

log = logging.getLogger("answer_trt")


class PromptEncoder:
    """Encodes a prompt and its negative (a user negative prompt, or the empty prompt
    c_0) in one text-engine call. c_0 is computed once and reused."""

    def __init__(self, tokenizer: Any, engine: Engine, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.engine = engine
        self.max_length = max_length
        self.input_name = engine.spec.input_names[0]
        self.output_name = engine.spec.output_names[0]
        self._empty: Tensor | None = None

    def tokenize(self, texts: list[str]) -> Tensor:
        for text in texts:
            n = len(self.tokenizer(text).input_ids)
            if n > self.max_length:
                log.warning("prompt is %d tokens, truncated to the model's limit of %d: %r", n, self.max_length, text)
        ids = self.tokenizer(
            texts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="np"
        ).input_ids
        return torch.from_numpy(ids).to(torch.int64)

    def encode(self, prompt: str, negative_prompt: str | None = None) -> tuple[Tensor, Tensor]:
        """``(c_p, c_neg)``, each ``[1, L, D]``; ``c_neg`` is c_0 when no negative prompt is given."""
        texts = [prompt]
        if negative_prompt is not None:
            texts.append(negative_prompt)
        elif self._empty is None:
            texts.append("")
        embeddings = self.engine.run({self.input_name: self.tokenize(texts)})[self.output_name]
        embeddings = embeddings.to(torch.float32)
        if negative_prompt is None and self._empty is None:
            self._empty = embeddings[1:2].clone()
        negative = embeddings[1:2] if negative_prompt is not None else self._empty
        assert negative is not None
        return embeddings[0:1], negative
