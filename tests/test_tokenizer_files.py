"""Generated tokenizer files: every listed word is one token, even where words share
pieces (the "an" of "and" inside "triangle"), and other text still tokenizes."""

from __future__ import annotations

from answer_trt.models.tiny import WORDS
from answer_trt.models.tokenizer_files import write_clip_tokenizer
from answer_trt.synthetic.dataset import VOCABULARY


def test_every_word_is_a_single_token(tmp_path):
    words = sorted(set(WORDS) | set(VOCABULARY))
    tokenizer = write_clip_tokenizer(tmp_path / "tok", words)
    for word in words:
        ids = tokenizer(word).input_ids
        assert len(ids) == 3, (word, tokenizer.convert_ids_to_tokens(ids))  # start, word, end
        assert tokenizer.convert_ids_to_tokens(ids)[1] == word + "</w>"
    caption = "a yellow triangle and a blue triangle"
    assert len(tokenizer(caption).input_ids) == 9
    assert len(tokenizer("zebra").input_ids) > 3  # unknown words fall back to pieces
