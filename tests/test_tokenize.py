"""Truncation: the head or the head and tail of long texts, special tokens kept, lengths within max_length."""

import pandas as pd
import pytest
from transformers import AutoTokenizer

from models import default_backbone_path
from utils.inference.reading import Reading
from utils.inference.tokens import cut


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(default_backbone_path())


@pytest.fixture(scope="module")
def roberta_tokenizer(tiny_roberta):
    return AutoTokenizer.from_pretrained(tiny_roberta)


@pytest.fixture(scope="module")
def toxic_texts(toxic_csv) -> list[str]:
    return pd.read_csv(toxic_csv).comment_text.tolist()


@pytest.fixture(params=["minilm_tokenizer", "roberta_tokenizer"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


def full_encoding(tokenizer, text):
    """(first special, content ids, last special) of the untruncated encoding."""
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    return ids[0], ids[1:-1], ids[-1]


def longest(texts, tokenizer):
    return max(texts, key=lambda t: len(tokenizer(t)["input_ids"]))


def test_cut_keeps_a_quarter_head_and_the_rest_tail():
    ids = list(range(20))
    assert cut(ids, 8, "head") == [0, 1, 2, 3, 4, 5, 6, 7]
    assert cut(ids, 8, "head_tail") == [0, 1, 14, 15, 16, 17, 18, 19]
    assert cut(ids, 20, "head_tail") == ids
    assert cut(ids, 3, "head_tail") == [17, 18, 19]


@pytest.mark.parametrize("max_length", [16, 32, 64])
def test_head_keeps_the_first_tokens(tokenizer, toxic_texts, max_length):
    text = longest(toxic_texts, tokenizer)
    first, content, last = full_encoding(tokenizer, text)
    encoded = Reading(max_length, "head").encode(tokenizer, [text])
    assert encoded.input_ids[0] == [first] + content[: max_length - 2] + [last]
    assert encoded.truncated == [True]
    assert encoded.tokens_per_text.tolist() == [max_length]


@pytest.mark.parametrize("max_length", [16, 32, 64])
def test_head_tail_keeps_the_first_quarter_and_the_end(tokenizer, toxic_texts, max_length):
    text = longest(toxic_texts, tokenizer)
    first, content, last = full_encoding(tokenizer, text)
    budget = max_length - 2
    head = budget // 4
    encoded = Reading(max_length, "head_tail").encode(tokenizer, [text])
    assert encoded.input_ids[0] == [first] + content[:head] + content[len(content) - (budget - head):] + [last]
    assert encoded.truncated == [True]
    assert encoded.tokens_per_text.tolist() == [max_length]
    decoded = tokenizer.decode(encoded.input_ids[0], skip_special_tokens=True)
    assert decoded.split()[-1] == tokenizer.decode(content, skip_special_tokens=True).split()[-1]


@pytest.mark.parametrize("truncation", ["head", "head_tail"])
def test_short_texts_are_untouched(tokenizer, truncation):
    texts = ["You are wonderful.", "a"]
    encoded = Reading(32, truncation).encode(tokenizer, texts)
    assert encoded.input_ids == [tokenizer(t)["input_ids"] for t in texts]
    assert encoded.truncated == [False, False]


def test_a_text_that_just_fits_is_not_truncated(tokenizer, toxic_texts):
    text = toxic_texts[0]
    size = len(tokenizer(text)["input_ids"])
    assert Reading(size).encode(tokenizer, [text]).truncated == [False]
    assert Reading(size - 1).encode(tokenizer, [text]).truncated == [True]


@pytest.mark.parametrize("truncation", ["head", "head_tail"])
def test_every_real_text_fits_and_keeps_its_special_tokens(tokenizer, toxic_texts, truncation):
    max_length = 32
    encoded = Reading(max_length, truncation).encode(tokenizer, toxic_texts)
    full_lengths = [len(ids) for ids in tokenizer(toxic_texts)["input_ids"]]
    assert len(encoded.input_ids) == len(toxic_texts)
    assert max(encoded.tokens_per_text.tolist()) <= max_length
    assert encoded.truncated == [n > max_length for n in full_lengths]
    assert any(encoded.truncated) and not all(encoded.truncated)
    for ids in encoded.input_ids:
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        assert tokenizer.cls_token_id not in ids[1:-1]


def test_unknown_truncation_is_rejected(minilm_tokenizer):
    with pytest.raises(ValueError, match="truncation"):
        Reading(16, "tail").encode(minilm_tokenizer, ["x"])
