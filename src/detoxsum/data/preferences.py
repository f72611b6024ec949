"""Preference pairs for the reward model: read them, map a source's layout to one shape, check them,
and hold out whole dialogues for evaluation.

Every source becomes a list of `PreferencePair(dialogue, chosen, rejected, family)`: the dialogue
(or post) that was summarized, the summary a person preferred, the one they did not, and an
optional family label (`polite_vs_rude`, `faithful_vs_off_topic`) that the metrics break down by.

Two layouts (`train_reward.layout`):
- `pairs`: one row per pair, columns named by `train_reward.{dialogue,chosen,rejected,family}_column`;
- `summarize_from_feedback`: OpenAI's comparisons (Stiennon et al. 2020): `info.post` (or
  `info.article` for news rows) is the text, `summaries` two objects with `text`, `choice` the index
  of the preferred one.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from detoxsum.config import TrainRewardConfig, looks_local
from detoxsum.data.sources import DATA_SUFFIXES, extracted_zip, read_table
from detoxsum.errors import DataError, first_line

FEEDBACK_COLUMNS = ("info", "summaries", "choice")


@dataclass(frozen=True)
class PreferencePair:
    dialogue: str
    chosen: str
    rejected: str
    family: str = "all"


# --- reading ------------------------------------------------------------------------------------


def read_preference_table(cfg: TrainRewardConfig) -> tuple[pd.DataFrame, str]:
    """The configured source as one table, and the name errors should give it."""
    if cfg.hub_dataset is not None:
        return _hub_table(cfg)
    path = Path(cfg.dataset).expanduser()
    if not path.exists():
        hint = "" if looks_local(cfg.dataset) else "; a Hub dataset id goes in train_reward.hub_dataset"
        raise DataError(f"train_reward.dataset: {cfg.dataset}: no such file{hint}")
    if path.suffix == ".zip":
        return _zip_table(path)
    if path.suffix not in DATA_SUFFIXES:
        raise DataError(f"train_reward.dataset: {cfg.dataset}: expected a csv, json, jsonl, parquet or zip file")
    return read_table(path), str(path)


def _zip_table(path: Path) -> tuple[pd.DataFrame, str]:
    """A zip's one data file, or its file with `train` in the name."""
    with extracted_zip(path) as extracted:
        files = sorted(p for p in Path(extracted).rglob("*") if p.suffix in DATA_SUFFIXES
                       and "__MACOSX" not in p.parts)
        if len(files) > 1:
            files = [p for p in files if "train" in p.name.lower()] or files
        if len(files) != 1:
            names = ", ".join(p.relative_to(extracted).as_posix() for p in files) or "no data file"
            raise DataError(f"{path}: expected one csv/json/jsonl/parquet file (or one named *train*), found {names}")
        label = f"{path}/{files[0].relative_to(extracted).as_posix()}"
        return read_table(files[0], label), label


def _hub_table(cfg: TrainRewardConfig) -> tuple[pd.DataFrame, str]:
    import datasets

    try:
        split = datasets.load_dataset(cfg.hub_dataset, name=cfg.dataset_config, split=cfg.split,
                                      revision=cfg.revision)
    except Exception as exc:  # datasets raises many types (ConnectionError, DatasetNotFoundError, ...)
        at = f" at revision {cfg.revision!r}" if cfg.revision else ""
        raise DataError(f"train_reward.hub_dataset: cannot read {cfg.hub_dataset!r} split {cfg.split!r}{at} "
                        f"({first_line(exc)})") from exc
    return split.to_pandas(), f"{cfg.hub_dataset}[{cfg.split}]"


# --- mapping and checking -----------------------------------------------------------------------


def require_columns(frame: pd.DataFrame, wanted: dict[str, str], origin: str) -> None:
    """`wanted` maps a column name to the params key that names it."""
    for column, key in wanted.items():
        if column not in frame.columns:
            found = ", ".join(map(str, frame.columns)) or "none"
            raise DataError(f"{origin}: no column {column!r} ({key}); columns found: {found}")


def pairs_from_table(frame: pd.DataFrame, cfg: TrainRewardConfig, origin: str) -> list[PreferencePair]:
    """Map the table's layout to preference pairs, unchecked."""
    if cfg.layout == "summarize_from_feedback":
        require_columns(frame, {name: "train_reward.layout" for name in FEEDBACK_COLUMNS}, origin)
        return [_feedback_pair(row, origin, index) for index, row in enumerate(frame.to_dict("records"))]
    wanted = {cfg.dialogue_column: "train_reward.dialogue_column", cfg.chosen_column: "train_reward.chosen_column",
              cfg.rejected_column: "train_reward.rejected_column"}
    require_columns(frame, wanted, origin)
    has_family = cfg.family_column is not None and cfg.family_column in frame.columns
    return [PreferencePair(_text(row[cfg.dialogue_column]), _text(row[cfg.chosen_column]),
                           _text(row[cfg.rejected_column]),
                           _text(row[cfg.family_column]) or "all" if has_family else "all")
            for row in frame.to_dict("records")]


def _feedback_pair(row: dict[str, Any], origin: str, index: int) -> PreferencePair:
    info, summaries, choice = (_decoded(row[name]) for name in FEEDBACK_COLUMNS)
    try:
        texts = [_text(summary["text"]) for summary in summaries]
        choice = int(choice)
        assert len(texts) == 2 and choice in (0, 1)
        post = _text(info.get("post")) or _text(info.get("article"))
    except (AssertionError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{origin}: row {index}: expected summaries = two objects with 'text', choice 0 or 1 and "
                        f"info with 'post' or 'article' (summarize_from_feedback layout)") from exc
    return PreferencePair(post, texts[choice], texts[1 - choice], "summarize_from_feedback")


def _decoded(value: Any) -> Any:
    """Nested fields come back from csv as JSON text, from parquet/Hub as arrays and dicts."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return list(value) if hasattr(value, "tolist") and not isinstance(value, (str, dict)) else value


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else str(value).strip()


def usable_pairs(pairs: list[PreferencePair], origin: str) -> tuple[list[PreferencePair], dict[str, int]]:
    """The pairs with every field filled and chosen != rejected, and how many of each kind were
    dropped; stop when fewer than two are left."""
    if pairs and all(pair.chosen == pair.rejected for pair in pairs):
        raise DataError(f"{origin}: chosen equals rejected in every row ({len(pairs)}): nothing to learn from")
    filled = [pair for pair in pairs if pair.dialogue and pair.chosen and pair.rejected]
    kept = [pair for pair in filled if pair.chosen != pair.rejected]
    if len(kept) < 2:
        raise DataError(f"{origin}: {len(kept)} usable preference pair(s) of {len(pairs)} rows (after dropping "
                        "empty fields and chosen == rejected); need at least 2")
    return kept, {"empty_field": len(pairs) - len(filled), "chosen_equals_rejected": len(filled) - len(kept)}


def load_preference_pairs(cfg: TrainRewardConfig, seed: int) -> tuple[list[PreferencePair], str, dict[str, int]]:
    """Read, map and check the configured pairs; at most `cfg.max_pairs`, drawn with `seed`. Also
    how many rows were dropped, by reason (`usable_pairs`)."""
    frame, origin = read_preference_table(cfg)
    pairs, dropped = usable_pairs(pairs_from_table(frame, cfg, origin), origin)
    if cfg.max_pairs is not None and len(pairs) > cfg.max_pairs:
        pairs = random.Random(seed).sample(pairs, cfg.max_pairs)
    return pairs, origin, dropped


def split_by_dialogue(pairs: list[PreferencePair], eval_fraction: float,
                      seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held-out): whole dialogues go to one side, so held-out accuracy is measured on
    dialogues the model never saw; by pair when there is a single dialogue."""
    groups = list(dict.fromkeys(pair.dialogue for pair in pairs))
    keys = groups if len(groups) >= 2 else list(range(len(pairs)))
    random.Random(seed).shuffle(keys)
    held_count = min(len(keys) - 1, max(1, round(eval_fraction * len(keys))))
    held = set(keys[:held_count])
    if len(groups) >= 2:
        return [p for p in pairs if p.dialogue not in held], [p for p in pairs if p.dialogue in held]
    return ([p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held])
