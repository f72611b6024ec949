"""The shipped sample data: original dialogues in DialogSum's layout, checked for shape and variety."""

import itertools
import json
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
SIZES = {"train": 100, "validation": 20, "test": 30}


def load(split):
    return [json.loads(line) for line in (SAMPLE / f"{split}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("split", SIZES)
def test_split_shape(split):
    rows = load(split)
    assert len(rows) == SIZES[split]
    for row in rows:
        assert set(row) == {"id", "dialogue", "summary", "topic"}
        assert row["dialogue"].startswith("#Person1#: ") and "\n#Person2#: " in row["dialogue"]
        assert 200 <= len(row["dialogue"]) <= 1200, row["id"]
        assert 40 <= len(row["summary"]) <= 240, row["id"]
    arguments = sum(row["topic"] == "argument" for row in rows)
    assert 0.15 <= arguments / len(rows) <= 0.25


def ngrams(text, n):
    words = text.lower().split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_no_two_dialogues_share_an_eight_word_run():
    rows = [row for split in SIZES for row in load(split)]
    grams = {row["id"]: ngrams(row["dialogue"], 8) for row in rows}
    shared = [(a, b) for a, b in itertools.combinations(grams, 2) if grams[a] & grams[b]]
    assert shared == []


def test_ids_unique():
    ids = [row["id"] for split in SIZES for row in load(split)]
    assert len(ids) == len(set(ids))
