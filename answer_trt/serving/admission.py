"""The batcher's pure decisions: which waiting requests join, and which pending rows make
an iteration's UNet call.

Functions of plain values (shape keys and row counts), so they are tested without
engines or threads; ``answer_trt.serving.batcher`` applies them to its requests. Rows
of one call must agree on the latent shape (``key``); requests are kept strictly oldest
first, so nothing starves (iteration-level scheduling as LLM servers do it, with
diffusion steps as the iterations).
"""

from __future__ import annotations

import collections
from collections.abc import Hashable, Iterable, Sequence

import torch
from torch import Tensor


def admit(in_flight: Iterable[tuple[Hashable, int]], waiting: Sequence[tuple[Hashable, int]], limit: int) -> int:
    """How many requests at the head of ``waiting`` join those ``in_flight`` now.

    Each entry is ``(key, rows)``: the request's latent-shape key and the rows it needs on
    the batch axis now (the batcher gives the pending call's rows of those in flight and the
    first call's of those waiting: the rows a step needs, as its guider declares, not its
    peak). A request joins while the rows of its key stay within ``limit``; the first that
    does not fit stops the queue (strictly oldest first). An idle batcher
    always takes the head, whatever its size (``submit`` checked it against the limit).
    ``limit=0`` runs one request at a time (batching off)."""
    used = collections.Counter[Hashable]()
    busy = False
    for key, rows in in_flight:
        used[key] += rows
        busy = True
    taken = 0
    for key, rows in waiting:
        if (busy or taken) and used[key] + rows > limit:
            break
        used[key] += rows
        taken += 1
    return taken


def group(keys: Sequence[Hashable]) -> list[list[int]]:
    """Indices of ``keys`` that can share a call (or a decode): one list per distinct key,
    in order of first appearance, each in order."""
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def fill(pending: Sequence[int | None], max_rows: int) -> list[int]:
    """The requests (indices into ``pending``) of this iteration's one call: oldest first,
    each whose pending rows still fit in ``max_rows`` (a later, smaller step may fill the room
    an earlier one leaves); ``None`` marks a request with no call pending. The others wait an
    iteration rather than make a second, part-empty call. The first request with a call
    always goes (``submit`` refused a peak above ``max_rows``), so every request gets its turn."""
    chosen: list[int] = []
    rows = 0
    for index, count in enumerate(pending):
        if count is None or (chosen and rows + count > max_rows):
            continue
        chosen.append(index)
        rows += count
    return chosen


def decode_chunks(images: Sequence[int], limit: int) -> list[list[int]]:
    """Consecutive runs of finished requests (``images`` each) whose images together fit in
    one VAE decode call of at most ``limit`` rows (the decoder's built batch), oldest first.
    A request of more than ``limit`` images (never admitted) is a run of its own."""
    chunks: list[list[int]] = []
    rows = 0
    for index, count in enumerate(images):
        if chunks and rows + count <= limit:
            chunks[-1].append(index)
            rows += count
        else:
            chunks.append([index])
            rows = count
    return chunks


def call_timesteps(per_request: Sequence[tuple[Tensor, int]]) -> Tensor:
    """One timestep per row for ``(t, rows)`` of each request in a call; requests on
    different schedulers may differ in dtype (then float32)."""
    dtypes = {t.dtype for t, _ in per_request}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    return torch.cat([t.to(dtype).reshape(1).expand(count) for t, count in per_request])
