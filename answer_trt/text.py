"""Prompt -> token ids -> text conditions, with c_0 (the empty prompt) cached.

Two prompt syntaxes (the request's ``prompt_syntax``): ``plain`` is diffusers' (the prompt
as text, cut at the tokenizer's limit); ``a1111`` is AUTOMATIC1111's (``answer_trt.prompts``:
emphasis, ``BREAK``, long prompts in chunks of 75 tokens, each encoded on its own by the text
engine, whose batch axis carries the chunks, and concatenated along the sequence axis).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from answer_trt.backends.base import Engine
from answer_trt.conditioning import TextCondition
from answer_trt.errors import UserInputError
from answer_trt.iospec import CLIP_SKIP, POOLED_EMBEDDINGS, TEXT_EMBEDDINGS, input_ids_name
from answer_trt.prompts.chunks import Chunk, frame, split_chunks
from answer_trt.prompts.emphasis import emphasize
from answer_trt.prompts.syntax import ParsedPrompt, parse_prompt

log = logging.getLogger("answer_trt")

@dataclass(frozen=True)
class EncodedChunks:
    """A prompt in A1111's syntax, tokenized: per tokenizer, each chunk's ``ids`` (framed to
    the text encoder's length), and each chunk's token ``weights`` (emphasis)."""

    ids: tuple[tuple[tuple[int, ...], ...], ...]  # [tokenizer][chunk][token]
    weights: tuple[tuple[float, ...], ...]  # [chunk][token]
    parsed: ParsedPrompt

    @property
    def chunks(self) -> int:
        return len(self.weights)


class PromptEncoder:
    """Encodes a prompt and its negative (a user negative prompt, or the empty prompt
    c_0) in one text-engine call; c_0 is computed once and reused. With
    ``zero_empty_negative`` (SDXL), c_0 is all zeros, as in diffusers' SDXL pipeline.

    Safe to share between threads: Hugging Face tokenizers are not, so one lock covers
    tokenization, the engine call and the c_0 cache."""

    def __init__(
        self, tokenizers: Sequence[Any], engine: Engine, max_length: int, zero_empty_negative: bool = False,
        widths: Sequence[int] = (),
    ) -> None:
        self.tokenizers = tuple(tokenizers)
        self.engine = engine
        self.max_length = max_length
        self.zero_empty_negative = zero_empty_negative
        self.widths = tuple(widths)  # each text encoder's part of the hidden states (emphasis rescales each)
        self._empty: dict[int, TextCondition] = {}  # c_0 per clip skip
        self._blank: dict[int, TextCondition] = {}  # the empty prompt's chunk (A1111's padding), per clip skip
        self._lock = threading.Lock()
        # The most rows one text-engine call takes (its profile's batch axis); None: any.
        profile = getattr(engine, "profile", None)
        self.max_rows: int | None = profile["batch"][2] if isinstance(profile, dict) and "batch" in profile else None

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
                            "the %s to keep it, or pass prompt_syntax a1111: A1111's long prompts, in chunks)",
                            which, len(ids), self.max_length, dropped, which)
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
               clip_skip: int = 1, syntax: str = "plain") -> tuple[TextCondition, TextCondition]:
        """``(c_p, c_neg)``, one row each; ``c_neg`` is c_0 when no negative prompt is given.
        ``clip_skip`` (A1111's; 1: the last layer) applies to both. ``syntax``: ``plain``
        (diffusers': hidden states ``[1, L, D]``) or ``a1111`` (A1111's, ``answer_trt.prompts``: k chunks,
        ``[1, L * k, D]``, the shorter condition padded with the empty prompt's chunks, emphasis applied;
        the pooled embedding is the first chunk's). ``UserInputError`` for syntax answer-trt does not run."""
        with self._lock:
            if syntax == "a1111":
                return self._encode_a1111(prompt, negative_prompt, clip_skip)
            return self._encode(prompt, negative_prompt, clip_skip)

    def with_negative(self, positive: TextCondition, negative: TextCondition | None,
                      clip_skip: int = 1) -> tuple[TextCondition, TextCondition]:
        """Given conditions (``prompt_embeds``): ``negative``, or c_0 repeated to the length of
        ``positive`` (the empty prompt's chunk per chunk; SDXL's zeros)."""
        if negative is not None:
            return positive, negative
        with self._lock:
            if clip_skip not in self._empty:
                self._encode("", None, clip_skip)
            empty = self._empty[clip_skip]
        chunks = positive.hidden.shape[1] // empty.hidden.shape[1]
        return positive, TextCondition(empty.hidden.repeat(1, chunks, 1), empty.pooled, empty.time_ids)

    # -- A1111's syntax ----------------------------------------------------------------------

    def tokenize_a1111(self, prompt: str) -> EncodedChunks:
        """``prompt`` parsed in A1111's syntax (``UserInputError`` for what is not supported)
        and cut into chunks of ``max_length - 2`` tokens (``answer_trt.prompts.chunks``)."""
        with self._lock:
            return self._tokenize_a1111(prompt)

    def _tokenize_a1111(self, prompt: str) -> EncodedChunks:
        parsed = parse_prompt(prompt)
        texts = [f.text for f in parsed.fragments]
        per_tokenizer: list[list[Chunk]] = []
        frames = []
        for tokenizer in self.tokenizers:
            special = tokenizer([""], padding="max_length", max_length=self.max_length, truncation=True,
                                return_tensors="np").input_ids[0].tolist()
            bos, eos, pad = special[0], special[1], special[-1]
            comma = tokenizer(",", add_special_tokens=False).input_ids
            ids = tokenizer(texts, add_special_tokens=False).input_ids
            pieces = [None if f.is_break else (piece, f.weight) for f, piece in zip(parsed.fragments, ids)]
            chunks = split_chunks(pieces, self.max_length - 2, comma[0] if len(comma) == 1 else None)
            per_tokenizer.append(chunks)
            frames.append(tuple(tuple(frame(c, self.max_length, bos, eos, pad)[0]) for c in chunks))
        if len({len(chunks) for chunks in per_tokenizer}) != 1:
            raise UserInputError("the model's tokenizers cut this prompt into different numbers of chunks: shorten "
                                 "it to one chunk, or use prompt_syntax plain")
        weights = tuple(tuple(frame(c, self.max_length, 0, 0, 0)[1]) for c in per_tokenizer[0])
        return EncodedChunks(tuple(frames), weights, parsed)

    def _run_rows(self, per_tokenizer: list[list[tuple[int, ...]]], clip_skip: int) -> tuple[Tensor, Tensor | None]:
        """Hidden states ``[R, L, D]`` (float32) and pooled ``[R, P]`` of framed id rows, in
        calls of at most ``max_rows`` rows (the text engine's built batch axis)."""
        count = len(per_tokenizer[0])
        step = self.max_rows or count
        hidden, pooled = [], []
        for start in range(0, count, step):
            feeds = {input_ids_name(i): torch.tensor(ids[start:start + step], dtype=torch.int64)
                     for i, ids in enumerate(per_tokenizer)}
            feeds[CLIP_SKIP] = torch.full((min(step, count - start),), clip_skip, dtype=torch.int64)
            out = self.engine.run(feeds)
            hidden.append(out[TEXT_EMBEDDINGS].to(torch.float32))
            if POOLED_EMBEDDINGS in out:
                pooled.append(out[POOLED_EMBEDDINGS].to(torch.float32))
        return torch.cat(hidden), torch.cat(pooled) if pooled else None

    def _encode_a1111(self, prompt: str, negative_prompt: str | None,
                      clip_skip: int) -> tuple[TextCondition, TextCondition]:
        prompts = [self._tokenize_a1111(prompt)]
        if negative_prompt is not None:
            prompts.append(self._tokenize_a1111(negative_prompt))
        need_blank = clip_skip not in self._blank
        per_tokenizer = [[row for p in prompts for row in p.ids[i]] for i in range(len(self.tokenizers))]
        if need_blank:  # the empty prompt's one chunk: c_0, and the padding of shorter conditions
            for i, tokenizer in enumerate(self.tokenizers):
                per_tokenizer[i].append(tuple(tokenizer([""], padding="max_length", max_length=self.max_length,
                                                        truncation=True, return_tensors="np").input_ids[0].tolist()))
        hidden, pooled = self._run_rows(per_tokenizer, clip_skip)
        if need_blank:
            self._blank[clip_skip] = TextCondition(hidden[-1:], None if pooled is None else pooled[-1:])
        blank = self._blank[clip_skip]
        conditions, row = [], 0
        for p in prompts:
            states = [emphasize(hidden[row + k], torch.tensor(p.weights[k]), self.widths) for k in range(p.chunks)]
            conditions.append(TextCondition(torch.cat(states)[None], None if pooled is None else pooled[row:row + 1]))
            row += p.chunks
        if negative_prompt is None:
            if self.zero_empty_negative:
                zero_pooled = None if blank.pooled is None else torch.zeros_like(blank.pooled)
                conditions.append(TextCondition(torch.zeros_like(blank.hidden), zero_pooled))
            else:
                conditions.append(blank)
        length = max(c.hidden.shape[1] for c in conditions)
        positive, negative = (self._padded(c, blank, length) for c in conditions)
        return positive, negative

    @staticmethod
    def _padded(cond: TextCondition, blank: TextCondition, length: int) -> TextCondition:
        """``cond`` grown to ``length`` tokens with the empty prompt's chunks (A1111's padding of
        cond and uncond to one length); an all-zero condition (SDXL's c_0) with zeros."""
        missing = (length - cond.hidden.shape[1]) // blank.hidden.shape[1]
        if missing <= 0:
            return cond
        pad = blank.hidden if bool(cond.hidden.any()) else torch.zeros_like(blank.hidden)
        return TextCondition(torch.cat([cond.hidden, *[pad] * missing], dim=1), cond.pooled, cond.time_ids)

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
