"""Splits as `datasets.Dataset`s, pure transforms: carving missing ones out of train, dropping
duplicates and test dialogues that leak into train or validation, grouping references."""

from __future__ import annotations

import numpy as np
from datasets import Dataset

from detoxsum.config import FetchConfig
from detoxsum.errors import DataError

SPLITS = ("train", "validation", "test")


COLUMNS = ("id", "dialogue", "summary")


TRUE_WORDS, FALSE_WORDS = {"true", "1", "yes"}, {"false", "0", "no", ""}


def heated_of(split: Dataset) -> list[bool] | None:
    """The split's `heated` flags (stored as text once read back from jsonl), or None without them."""
    if "heated" not in split.column_names:
        return None
    return [str(value).strip().lower() in TRUE_WORDS for value in split["heated"]]


def complete_splits(splits: dict[str, Dataset], cfg: FetchConfig, seed: int) -> dict[str, Dataset]:
    """Carve missing validation/test splits out of train (or out of a single unsplit file).

    Exact duplicate (dialogue, summary) rows go first, and rows that share a dialogue (one dialogue
    with several references) are carved together, so no carved test dialogue is also in train.
    """
    pool = drop_duplicate_pairs(splits.pop("all") if "all" in splits else splits.pop("train"))
    total = len(pool)
    for name, fraction in (("test", cfg.test_fraction), ("validation", cfg.validation_fraction)):
        if name not in splits:
            if len(pool) < 3:
                raise DataError(f"fetch.dataset: too few rows ({len(pool)}) to carve out a {name} split")
            size = max(1, round(total * fraction))  # a fraction of all rows, not of what is left
            pool, splits[name] = carve_by_dialogue(pool, size, seed)
    splits["train"] = pool
    return splits


def normalised(text: str) -> str:
    """Text compared up to whitespace (line breaks, doubled spaces)."""
    return " ".join(text.split())


def pair_key(dialogue: str, summary: str) -> tuple[str, str]:
    """What makes two rows duplicates: the same dialogue and summary up to whitespace."""
    return normalised(dialogue), normalised(summary)


def drop_duplicate_pairs(split: Dataset) -> Dataset:
    """The first row of each (dialogue, summary) pair, compared up to whitespace."""
    seen: set[tuple[str, str]] = set()
    keep = []
    for index, (dialogue, summary) in enumerate(zip(split["dialogue"], split["summary"])):
        key = pair_key(dialogue, summary)
        if key not in seen:
            seen.add(key)
            keep.append(index)
    return split if len(keep) == len(split) else split.select(keep)


def carve_by_dialogue(pool: Dataset, size: int, seed: int) -> tuple[Dataset, Dataset]:
    """(rest, carved): whole dialogues, drawn at random with `seed`, until `size` rows are carved."""
    rows_of: dict[str, list[int]] = {}
    for index, dialogue in enumerate(pool["dialogue"]):
        rows_of.setdefault(normalised(dialogue), []).append(index)
    groups = list(rows_of.values())
    order = np.random.default_rng(seed).permutation(len(groups))
    carved: list[int] = []
    for group in order:
        if len(carved) >= size or len(carved) + len(groups[group]) >= len(pool):
            break
        carved += groups[group]
    if not carved:
        raise DataError(f"fetch.dataset: every row shares one dialogue; cannot carve out a split of {size} rows")
    chosen = set(carved)
    return pool.select([i for i in range(len(pool)) if i not in chosen]), pool.select(sorted(carved))


def drop_test_dialogues(kept: dict[str, Dataset]) -> dict[str, dict[str, int]]:
    """Remove from validation the dialogues that are in test, and from train those in test or
    validation (in place in `kept`), so the test split stays as published and nothing evaluated was
    trained on. Returns the rows dropped per split and reason (SAMSum as distributed has 41 test
    dialogues that are also in train)."""
    counts: dict[str, dict[str, int]] = {}
    held_out = {"test": {normalised(d) for d in kept["test"]["dialogue"]}}
    for name in ("validation", "train"):
        dialogues = [normalised(d) for d in kept[name]["dialogue"]]
        remaining = list(range(len(dialogues)))
        counts[name] = {}
        for other, held in held_out.items():
            counts[name][f"dropped_in_{other}"] = sum(dialogues[i] in held for i in remaining)
            remaining = [i for i in remaining if dialogues[i] not in held]
        kept[name] = kept[name].select(remaining)
        held_out[name] = {dialogues[i] for i in remaining}
    return counts


def cap_rows(split: Dataset, cap: int | None, seed: int) -> Dataset:
    if cap is None or len(split) <= cap:
        return split
    return split.shuffle(seed=seed).select(range(cap))


def group_references(split: Dataset) -> tuple[list[str], list[list[str]], list[str]]:
    """Unique dialogues in first-seen order, each with all its reference summaries, and its id."""
    references: dict[str, list[str]] = {}
    ids: dict[str, str] = {}
    for row in split:
        references.setdefault(row["dialogue"], []).append(row["summary"])
        ids.setdefault(row["dialogue"], row["id"])
    dialogues = list(references)
    return dialogues, [references[d] for d in dialogues], [ids[d] for d in dialogues]
