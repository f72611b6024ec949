"""The filter stage's rules: which dialogues are kept, and why the others were dropped."""

from __future__ import annotations

from collections.abc import Callable

from datasets import Dataset

from detoxsum.config import FilterConfig
from detoxsum.data.splits import pair_key


def filter_split(
    split: Dataset, cfg: FilterConfig, count_tokens: Callable[[str], int] | None = None
) -> tuple[Dataset, dict[str, int]]:
    """Drop empty, duplicate and out-of-range rows; return the kept rows and counts per reason.

    A duplicate is the same (dialogue, summary) pair up to whitespace: DialogSum's test split repeats
    a dialogue once per reference summary, and those rows must stay.
    """
    counts = {"rows_in": len(split), "dropped_empty": 0, "dropped_duplicate": 0,
              "dropped_too_short": 0, "dropped_too_long": 0}
    seen: set[tuple[str, str]] = set()
    keep: list[int] = []
    for index, row in enumerate(split):
        reason = _drop_reason(row["dialogue"], row["summary"], cfg, count_tokens, seen)
        if reason:
            counts[f"dropped_{reason}"] += 1
        else:
            keep.append(index)
    counts["kept"] = len(keep)
    return split.select(keep), counts


def _drop_reason(dialogue, summary, cfg, count_tokens, seen) -> str | None:
    if not dialogue.strip() or not summary.strip():
        return "empty"
    key = pair_key(dialogue, summary)
    if key in seen:
        return "duplicate"
    seen.add(key)
    chars = len(dialogue.strip())
    if chars < cfg.min_chars:
        return "too_short"
    if chars > cfg.max_chars:
        return "too_long"
    if count_tokens is not None and (cfg.min_tokens is not None or cfg.max_tokens is not None):
        tokens = count_tokens(dialogue)
        if cfg.min_tokens is not None and tokens < cfg.min_tokens:
            return "too_short"
        if cfg.max_tokens is not None and tokens > cfg.max_tokens:
            return "too_long"
    return None
