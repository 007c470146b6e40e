from __future__ import annotations

import pytest

from services.retrieval.passages import PassageSplitter
from tests.conftest import models_dir


@pytest.fixture(scope="module")
def splitter():
    path = models_dir() / "bge-small-en" / "tokenizer.json"
    if not path.exists():
        pytest.skip("bge-small-en tokenizer absent; run `searchctl models fetch`")
    return PassageSplitter(path, window=64, overlap=8)


def test_short_text_is_one_passage(splitter):
    assert [p.text for p in splitter.split("a short abstract")] == ["a short abstract"]


def test_long_text_splits_into_overlapping_windows_that_cover_it(splitter):
    words = [f"word{i}" for i in range(400)]
    text = " ".join(words)
    passages = splitter.split(text)
    assert len(passages) > 3
    assert [p.index for p in passages] == list(range(len(passages)))
    assert passages[0].text.startswith("word0") and passages[-1].text.endswith("word399")
    tokenizer = splitter._tokenizer
    for p in passages:
        assert len(tokenizer.encode(p.text, add_special_tokens=False).ids) <= splitter.window
    for left, right in zip(passages, passages[1:]):  # neighbours share text
        assert left.text.split()[-1] in right.text.split()[:10] or right.text.split()[0] in left.text


def test_bad_settings_are_refused():
    path = models_dir() / "bge-small-en" / "tokenizer.json"
    if not path.exists():
        pytest.skip("tokenizer absent")
    with pytest.raises(ValueError):
        PassageSplitter(path, window=8)
    with pytest.raises(ValueError):
        PassageSplitter(path, window=64, overlap=40)
