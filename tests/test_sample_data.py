"""The shipped sample data: original dialogues in DialogSum's layout, checked for shape and variety."""

import itertools
import json
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
SIZES = {"train": 140, "validation": 20, "test": 102}
# Heated arguments with insults per split: the test split needs enough to measure a detox on them
# alone, the training split enough for PPO to train on.
MIN_HEATED = {"train": 48, "validation": 3, "test": 60}


def load(split):
    return [json.loads(line) for line in (SAMPLE / f"{split}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("split", SIZES)
def test_split_shape(split):
    rows = load(split)
    assert len(rows) == SIZES[split]
    for row in rows:
        assert set(row) == {"id", "dialogue", "summary", "topic", "heated"}
        assert row["heated"] is (row["topic"] == "argument"), row["id"]
        assert row["dialogue"].startswith("#Person1#: ") and "\n#Person2#: " in row["dialogue"]
        assert 200 <= len(row["dialogue"]) <= 1200, row["id"]
        assert 40 <= len(row["summary"]) <= 240, row["id"]
    heated = sum(row["heated"] for row in rows)
    assert MIN_HEATED[split] <= heated < len(rows)  # calm dialogues too, or "less toxic" means nothing


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
