"""CLIP tokenization for an engines folder through the ``tokenizers`` library alone.

The build writes each tokenizer as transformers loaded it (its ``tokenizers`` backend:
normalizer, pre-tokenizer, BPE model, post-processor, padding and truncation sides and
token) into ``FAST_TOKENIZER_FILE`` beside the copied tokenizer files. ``generate
--engines`` reads that file and never imports transformers (about half a second of
start-up). ``FastClipTokenizer`` answers the one call shape the runtime makes
(``tokenizer(texts, padding="max_length", max_length=L, truncation=True,
return_tensors="np").input_ids``, and ``tokenizer(text).input_ids``) the way
transformers' fast tokenizer does: set truncation and padding on the backend, then
``encode_batch`` with the special tokens (``tests/test_fast_start.py`` compares the two
on many prompts).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from answer_trt.errors import UserInputError
from answer_trt.manifest import FAST_TOKENIZER_FILE


@dataclass(frozen=True)
class Encoded:
    """The part of transformers' ``BatchEncoding`` the runtime reads."""

    input_ids: Any  # list[int], list[list[int]] or an int64 array [N, L]


class FastClipTokenizer:
    """A ``tokenizers.Tokenizer`` behind transformers' call signature (the subset used
    here). Its padding and truncation settings change per call, as transformers' do,
    under a lock."""

    def __init__(self, backend: Any, source: Path) -> None:
        padding, truncation = backend.padding, backend.truncation
        if not padding or "pad_id" not in padding:
            raise UserInputError(f"{source} has no padding settings (pad token): rebuild the engines folder")
        self.backend = backend
        self.pad_id: int = padding["pad_id"]
        self.pad_token: str = padding["pad_token"]
        self.pad_type_id: int = padding.get("pad_type_id", 0)
        self.padding_side: str = padding.get("direction", "right")
        self.truncation_side: str = (truncation or {}).get("direction", "right")
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path) -> FastClipTokenizer:
        from tokenizers import Tokenizer

        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - a damaged file: one line that says to rebuild
            raise UserInputError(f"{path} is not a tokenizer file ({type(exc).__name__}): rebuild the engines "
                                 "folder") from None
        return cls(backend, path)

    def __call__(
        self, text: str | Sequence[str], *, padding: bool | str = False, max_length: int | None = None,
        truncation: bool = False, return_tensors: str | None = None, add_special_tokens: bool = True,
    ) -> Encoded:
        single = isinstance(text, str)
        texts = [text] if isinstance(text, str) else list(text)
        with self._lock:
            backend = self.backend
            if truncation and max_length is not None:
                backend.enable_truncation(max_length, stride=0, strategy="longest_first",
                                          direction=self.truncation_side)
            else:
                backend.no_truncation()
            if padding == "max_length" and max_length is not None:
                backend.enable_padding(length=max_length, direction=self.padding_side, pad_id=self.pad_id,
                                       pad_type_id=self.pad_type_id, pad_token=self.pad_token)
            else:
                backend.no_padding()
            encodings = backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        ids = [encoding.ids for encoding in encodings]
        if return_tensors == "np":
            return Encoded(np.array(ids, dtype=np.int64))
        return Encoded(ids[0] if single else ids)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of token ``ids``, special tokens skipped (transformers' ``decode``)."""
        with self._lock:
            return str(self.backend.decode(list(ids), skip_special_tokens=True))


def write_fast_tokenizer(tokenizer: Any, source_folder: Path, out_folder: Path, max_length: int | None = None) -> Path:
    """Write ``tokenizer`` (a transformers CLIP tokenizer loaded from ``source_folder``) as
    one ``tokenizers`` file in ``out_folder``, padding and truncation sides and pad token
    included, padded and cut to ``max_length`` (the model's ``ModelDims.text_max_length``, which
    bounds the tokenizer config's ``model_max_length`` by the text encoder's positions; None:
    the tokenizer's own). A slow (Python) tokenizer is converted by transformers' ``CLIPTokenizerFast``."""
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # transformers 4.x: CLIPTokenizer is the slow one; 5.x has only the fast one
        import importlib

        fast_class = importlib.import_module("transformers").CLIPTokenizerFast
        backend = fast_class.from_pretrained(source_folder).backend_tokenizer
    copy = Tokenizer.from_str(backend.to_str())
    length = int(tokenizer.model_max_length) if max_length is None else max_length
    copy.enable_truncation(length, stride=0, strategy="longest_first", direction=tokenizer.truncation_side)
    copy.enable_padding(length=length, direction=tokenizer.padding_side, pad_id=int(tokenizer.pad_token_id),
                        pad_type_id=int(getattr(tokenizer, "pad_token_type_id", 0)), pad_token=str(tokenizer.pad_token))
    path = out_folder / FAST_TOKENIZER_FILE
    path.write_text(json.dumps(json.loads(copy.to_str()), ensure_ascii=False, indent=1))
    return path
