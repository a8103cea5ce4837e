"""The token stream of a weighted prompt cut into the text encoder's chunks (pure).

A1111's long prompts: the tokens (without start and end tokens) go into chunks of
``text_max_length - 2`` (75 for CLIP's 77); each chunk is framed as ``[BOS] tokens [EOS]``
and padded to ``text_max_length`` with the tokenizer's pad token (what diffusers' tokenizer
call gives a short prompt, so a prompt of one chunk has diffusers' ids). The text encoder
encodes each chunk on its own; their hidden states are concatenated along the sequence
axis. When a chunk fills up and a comma lies within the last ``backtrack`` tokens (A1111's
"prompt word wrap length limit", 20 by default), the tokens after that comma move to the next
chunk. ``BREAK`` closes the current chunk (padded), even an empty one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

# A1111's default "Prompt word wrap length limit" (comma_padding_backtrack).
COMMA_BACKTRACK = 20


@dataclass
class Chunk:
    """One chunk's content tokens and their weights (no start/end tokens), at most the
    chunk length."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


Piece = tuple[Sequence[int], float] | None  # a fragment's token ids and weight; None: BREAK


def split_chunks(pieces: Sequence[Piece], chunk_length: int, comma: int | None = None,
                 backtrack: int = COMMA_BACKTRACK) -> list[Chunk]:
    """The chunks of ``pieces`` (each fragment's ids and weight, ``None`` for BREAK), each at
    most ``chunk_length`` tokens; ``comma``: the tokenizer's id of "," (``None``: no
    backtracking). An empty prompt is one empty chunk."""
    chunks: list[Chunk] = []
    current = Chunk()
    last_comma = -1  # index in ``current`` of its last comma

    def close() -> None:
        nonlocal current, last_comma
        chunks.append(current)
        current, last_comma = Chunk(), -1

    for piece in pieces:
        if piece is None:
            close()
            continue
        ids, weight = piece
        for token in ids:
            if token == comma:
                last_comma = len(current.tokens)
            elif (backtrack and len(current.tokens) == chunk_length and last_comma != -1
                  and len(current.tokens) - last_comma <= backtrack):
                moved = Chunk(current.tokens[last_comma + 1:], current.weights[last_comma + 1:])
                del current.tokens[last_comma + 1:], current.weights[last_comma + 1:]
                close()
                current = moved
            if len(current.tokens) == chunk_length:
                close()
            current.tokens.append(token)
            current.weights.append(weight)
    if current.tokens or not chunks:
        close()
    return chunks


def frame(chunk: Chunk, length: int, bos: int, eos: int, pad: int) -> tuple[list[int], list[float]]:
    """``[BOS] tokens [EOS] pad...`` of ``length`` ids, and their weights (1 for the start,
    end and pad tokens)."""
    fill = length - 2 - len(chunk.tokens)
    if fill < 0:
        raise ValueError(f"a chunk of {len(chunk.tokens)} tokens does not fit {length} with its start and end tokens")
    return [bos, *chunk.tokens, eos] + [pad] * fill, [1.0, *chunk.weights, 1.0] + [1.0] * fill


def token_count(chunks: Sequence[Chunk], chunk_length: int) -> int:
    """A1111's token counter: every chunk but the last counts in full, the last its tokens."""
    return chunk_length * (len(chunks) - 1) + len(chunks[-1].tokens) if chunks else 0
