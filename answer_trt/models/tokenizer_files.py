"""Writes CLIP tokenizer files (vocab.json, merges.txt) generated locally, no download.

The vocabulary is CLIP's byte-level alphabet, each symbol alone and as a word end
(``x</w>``), plus merges for the given words, so that those words become single
tokens and any other text still tokenizes (letter by letter).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def byte_alphabet() -> list[str]:
    """CLIP's 256 byte symbols: printable bytes stand for themselves, the rest are
    shifted past 255 so that every byte has a visible, non-space character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, shift = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shift))
            shift += 1
    return symbols


def _add_word_merges(word: str, merges: list[tuple[str, str]]) -> None:
    """Extend ``merges`` so that BPE, applying merges by rank, ends with ``word</w>`` as
    one symbol: first replay the merges already known (other words may share pieces,
    e.g. "an" of "and" inside "triangle"), then join the first two symbols, repeat."""
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    rank = {pair: i for i, pair in enumerate(merges)}
    while len(symbols) > 1:
        pairs = [(rank.get((a, b), len(merges)), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        best, i = min(pairs)
        if best == len(merges):  # no known merge applies: add one for the first pair
            merges.append((symbols[0], symbols[1]))
            rank[merges[-1]] = best
            i = 0
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]


def write_clip_tokenizer(
    folder: Path, words: Iterable[str], model_max_length: int = 77, pad_token: str = EOS
) -> CLIPTokenizer:
    """Save a CLIPTokenizer covering ``words`` into ``folder`` and return it loaded from there.
    (SDXL's second tokenizer pads with ``!`` instead of the end token.)"""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    alphabet = byte_alphabet()
    vocab_list = alphabet + [a + "</w>" for a in alphabet]
    merges: list[tuple[str, str]] = []
    for word in sorted(set(words)):
        if len(word) >= 2:
            _add_word_merges(word, merges)
    known = set(vocab_list)
    for left, right in merges:
        if left + right not in known:
            known.add(left + right)
            vocab_list.append(left + right)
    vocab_list += [BOS, EOS]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab_list)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": model_max_length,
                "bos_token": BOS,
                "eos_token": EOS,
                "unk_token": EOS,
                "pad_token": pad_token,
            }
        )
    )
    return CLIPTokenizer.from_pretrained(folder)


def clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary from its BPE ``merges``, built as CLIP's simple tokenizer builds it
    (``clip/simple_tokenizer.py``): the 256 byte symbols, each again with ``</w>``, each merge's
    joined pair in rank order, then the start and end tokens. With CLIP's 48,894 merges that is
    49,408 tokens: ``<|startoftext|>`` 49406, ``<|endoftext|>`` 49407. CLIP orders the byte
    symbols as its ``bytes_to_unicode`` lists them: the 188 printable ones, then the shifted
    ones (``a`` is 64, ``a</w>`` 320)."""
    symbols = byte_alphabet()
    alphabet = [s for s in symbols if ord(s) < 256] + [s for s in symbols if ord(s) >= 256]
    tokens = alphabet + [a + "</w>" for a in alphabet] + [a + b for a, b in merges] + [BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}


def write_clip_bpe(folder: Path, merges: list[tuple[str, str]]) -> None:
    """Write ``vocab.json`` and ``merges.txt`` (transformers' CLIPTokenizer files) for ``merges``
    into ``folder`` (created if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(clip_vocab(merges), ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                       encoding="utf-8")
