"""Writes CLIP tokenizer files (vocab.json, merges.txt) generated locally, no download.

The vocabulary is CLIP's byte-level alphabet, each symbol alone and as a word end
(``x</w>``), plus merges for the given words, so that those words become single
tokens and any other text still tokenizes (letter by letter).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

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


def _merges_for(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that assemble ``word</w>`` from its letters."""
    merges = []
    current = word[0]
    for position, ch in enumerate(word[1:], start=1):
        piece = ch + "</w>" if position == len(word) - 1 else ch
        merges.append((current, piece))
        current += piece
    return merges


def write_clip_tokenizer(
    folder: Path, words: Iterable[str], model_max_length: int = 77, pad_token: str = EOS
) -> CLIPTokenizer:
    """Save a CLIPTokenizer covering ``words`` into ``folder`` and return it loaded from there.
    (SDXL's second tokenizer pads with ``!`` instead of the end token.)"""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = byte_alphabet()
    vocab_list = alphabet + [a + "</w>" for a in alphabet]
    merges: list[tuple[str, str]] = []
    for word in sorted(set(words)):
        if len(word) < 2:
            continue
        for left, right in _merges_for(word):
            if (left, right) not in merges:
                merges.append((left, right))
                if left + right not in vocab_list:
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
