"""Reading data: the sources `fetch` names (local csv / json / jsonl / parquet files, folders of
split files, zips, Hub datasets; columns normalised to id / dialogue / summary) and the split files
the stages write."""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
from datasets import Dataset, DatasetDict

from detoxsum.config import FetchConfig, looks_local
from detoxsum.data.dialogue_files import decoded_json_lines
from detoxsum.data.splits import COLUMNS, FALSE_WORDS, SPLITS, TRUE_WORDS, cap_rows, complete_splits
from detoxsum.errors import DataError, first_line, yaml_kind

DATA_SUFFIXES = (".csv", ".json", ".jsonl", ".parquet")


# Words that name each split anywhere in a file name (`dialogsum_train.csv`, `samsum-val.json`,
# `train-00000-of-00001.parquet`), as whole words: `contest.csv` and `trainer.csv` name no split.
SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                 "dev": "validation", "test": "test"}


# Hugging Face's shard names: `train-00000-of-00002.parquet`.
SHARD = re.compile(r"[-_.](\d+)-of-(\d+)$")


def load_raw_splits(cfg: FetchConfig, seed: int) -> DatasetDict:
    """Read the configured source into train/validation/test with normalised columns."""
    if cfg.hub_dataset is not None:
        frames = _hub_frames(cfg.hub_dataset, cfg.dataset_config, cfg.trust_remote_code, cfg.revision.dataset)
    else:
        path = Path(cfg.dataset).expanduser()
        if not path.exists():
            where = "" if path.is_absolute() else f" (from {Path.cwd()})"
            hint = "" if looks_local(cfg.dataset) else "; a Hub dataset id goes in fetch.hub_dataset"
            raise DataError(f"fetch.dataset: {cfg.dataset}: no such file or folder{where}{hint}")
        frames = _local_frames(path)
    splits = {name: normalise_columns(frame, cfg, origin) for name, (frame, origin) in frames.items()}
    for name, (_frame, origin) in frames.items():
        if name in ("all", "train") and len(splits[name]) == 0:
            raise DataError(f"{origin}: no rows to train on (a header and nothing else?)")
    splits = complete_splits(splits, cfg, seed)
    caps = {"train": cfg.max_train_rows, "validation": cfg.max_validation_rows, "test": cfg.max_test_rows}
    return DatasetDict({name: cap_rows(splits[name], caps[name], seed) for name in SPLITS})


@contextlib.contextmanager
def extracted_zip(path: Path) -> Iterator[Path]:
    """A temporary folder holding the zip's files. Tables are read whole into memory, so the copy
    goes as soon as the caller has read them, failure or not."""
    with tempfile.TemporaryDirectory(prefix="detoxsum-zip-") as extracted:
        try:
            with zipfile.ZipFile(path) as archive:
                archive.extractall(extracted)
        except zipfile.BadZipFile as exc:
            raise DataError(f"{path}: not a readable zip file ({exc})") from exc
        yield Path(extracted)


def _local_frames(path: Path) -> dict[str, tuple[pd.DataFrame, str]]:
    if path.suffix == ".zip":
        with extracted_zip(path) as extracted:
            return _folder_frames(extracted, label=str(path))
    if path.is_dir():
        return _folder_frames(path, label=str(path))
    return {"all": (read_table(path), str(path))}


def split_words(file_name: str) -> set[str]:
    """The splits a file name names (`dialogsum_train.csv` -> {"train"}): its words before the
    suffix, split on anything but letters and digits, looked up in SPLIT_ALIASES."""
    stem = Path(file_name).stem.lower()
    return {SPLIT_ALIASES[word] for word in re.split(r"[^a-z0-9]+", stem) if word in SPLIT_ALIASES}


def shard_key(file: Path) -> tuple[str, int, int] | None:
    """(name without the shard part, index, count) of `train-00001-of-00002.parquet`, else None."""
    match = SHARD.search(file.stem)
    if match is None:
        return None
    return file.with_name(file.stem[: match.start()] + file.suffix).as_posix(), int(match[1]), int(match[2])


def is_complete_shard_set(files: list[Path]) -> bool:
    """Whether `files` are all the shards of one table: same name, same count, every index once."""
    keys = [shard_key(file) for file in files]
    if None in keys or len({(name, count) for name, _index, count in keys}) != 1:
        return False
    return sorted(index for _name, index, _count in keys) == list(range(keys[0][2]))


def files_by_split(files: list[Path], folder: Path, label: str) -> dict[str, list[Path]]:
    """Each split's file (or all its shards), from the split words in the file names; one DataError
    that lists every file it cannot place (a name with two split words, two tables for one split)."""
    by_split: dict[str, list[Path]] = {}
    problems = []
    for file in files:
        named = split_words(file.name)
        if len(named) > 1:
            problems.append(f"{file.relative_to(folder).as_posix()} names {' and '.join(sorted(named))}")
        elif named:
            by_split.setdefault(named.pop(), []).append(file)
    for split, split_files in by_split.items():
        sharded = len(split_files) > 1 or shard_key(split_files[0]) is not None
        if sharded and not is_complete_shard_set(split_files):
            listed = ", ".join(file.relative_to(folder).as_posix() for file in split_files)
            problems.append(f"{split}: {listed}")
    if problems:
        raise DataError(f"{label}: cannot tell the splits apart: {'; '.join(problems)} (rename or remove files so "
                        "each split is one file, or the complete shards of one, e.g. train-00000-of-00002.parquet)")
    return by_split


def _folder_frames(folder: Path, label: str) -> dict[str, tuple[pd.DataFrame, str]]:
    files = sorted(p for p in folder.rglob("*") if p.suffix in DATA_SUFFIXES and "__MACOSX" not in p.parts)

    def origin(file: Path) -> str:  # named from `label`: a zip's files are read from a temporary folder
        return f"{label}/{file.relative_to(folder).as_posix()}"

    by_split = files_by_split(files, folder, label)
    if not by_split and len(files) == 1:
        return {"all": (read_table(files[0], origin(files[0])), origin(files[0]))}
    if "train" not in by_split:
        found = ", ".join(file.relative_to(folder).as_posix() for file in files) or "no csv/json/jsonl/parquet file"
        raise DataError(f"{label}: no training file found (expected a file name with the word train, e.g. "
                        f"train.jsonl or dialogsum_train.csv; found {found})")
    return {split: _read_shards(split_files, origin) for split, split_files in by_split.items()}


def _read_shards(files: list[Path], origin: Callable[[Path], str]) -> tuple[pd.DataFrame, str]:
    """One split's table from its file, or its shards in order (all with the same columns)."""
    frames = [read_table(file, origin(file)) for file in files]
    for file, frame in zip(files[1:], frames[1:]):
        if list(frame.columns) != list(frames[0].columns):
            raise DataError(f"{origin(file)}: columns {', '.join(map(str, frame.columns))} differ from "
                            f"{origin(files[0])}'s {', '.join(map(str, frames[0].columns))}")
    if len(frames) == 1:
        return frames[0], origin(files[0])
    return pd.concat(frames, ignore_index=True), f"{origin(files[0])} (+{len(files) - 1} shards)"


def read_table(path: Path, label: str | None = None) -> pd.DataFrame:
    """Read csv / json (array or lines) / jsonl / parquet with every column kept as text; errors
    name the file as `label` (default: its path), and for JSON lines the first line at fault."""
    name, kind = label or path, path.suffix[1:]
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        # Read once, parsed from memory. utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part
        # of the first column's name; newline="": line ends inside quoted csv fields stay as written.
        with path.open(encoding="utf-8-sig", newline="") as handle:
            text = handle.read()
    except (ValueError, OSError) as exc:  # UnicodeDecodeError is a ValueError
        raise DataError(f"{name}: cannot read as {kind} ({exc})") from exc
    if not text.strip():
        raise DataError(f"{name}: the file is empty")
    lines = path.suffix == ".jsonl" or (path.suffix == ".json" and not text.lstrip().startswith("["))
    try:
        if path.suffix == ".csv":
            return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        return pd.read_json(io.StringIO(text), lines=lines, dtype=False)
    except (ValueError, TypeError) as exc:  # TypeError: a line that is a JSON list
        bad_line = first_bad_json_line(text) if lines else None
        detail = f"line {bad_line[0]} is not a JSON object ({bad_line[1]})" if bad_line else f"cannot read as {kind} ({exc})"
        raise DataError(f"{name}: {detail}") from exc


def first_bad_json_line(text: str) -> tuple[int, str] | None:
    """The number of the first line of JSON-lines `text` that is not a JSON object, and why; None
    when every line is one (pandas' own message then says what is wrong)."""
    for number, value, problem in decoded_json_lines(text):
        if problem is not None or not isinstance(value, dict):
            return number, problem or f"found a {yaml_kind(value)}"
    return None


def _hub_frames(dataset_id: str, config_name: str | None, trust_remote_code: bool, revision: str | None):
    import datasets

    try:
        loaded = datasets.load_dataset(dataset_id, name=config_name, revision=revision,
                                       trust_remote_code=trust_remote_code)
    except Exception as exc:  # datasets raises many types (ConnectionError, DatasetNotFoundError, ...)
        at = f" at revision {revision!r}" if revision else ""
        raise DataError(f"fetch.hub_dataset: the Hub has no dataset {dataset_id!r}{at} here "
                        f"({first_line(exc)})") from exc
    frames = {}
    for name, split in loaded.items():
        canonical = SPLIT_ALIASES.get(name.lower())
        if canonical and canonical not in frames:
            frames[canonical] = (split.to_pandas(), f"{dataset_id}[{name}]")
    if "train" not in frames:
        raise DataError(f"fetch.hub_dataset: Hub dataset {dataset_id!r} has no train split ({list(loaded)})")
    return frames


def hub_commit(repo_id: str, revision: str | None, repo_type: str = "dataset") -> str | None:
    """The commit a Hub repo (a dataset, or a model with `repo_type="model"`) at `revision` (null:
    main) resolves to, or None where it cannot be told.

    A 40-hex revision is a commit already. Otherwise the Hub cache's ref file
    (`<HF_HUB_CACHE>/datasets--owner--name/refs/<revision>`) holds the commit last downloaded, which
    is what a load that just ran (online or offline) read; online, the Hub is asked when that file
    is missing.
    """
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    if revision is not None and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    repo_cache = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
    ref = repo_cache / "refs" / (revision or "main")
    if ref.is_file():
        return ref.read_text().strip() or None
    if constants.HF_HUB_OFFLINE:
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision).sha
    except Exception:  # no network, no such repo: the commit stays unknown, the fetch itself succeeded
        return None


def normalise_columns(frame: pd.DataFrame, cfg: FetchConfig, origin: str) -> Dataset:
    wanted = {"dialogue": cfg.dialogue_column, "summary": cfg.summary_column}
    if cfg.id_column is not None:
        wanted["id"] = cfg.id_column
    for canonical, column in wanted.items():
        if column not in frame.columns:
            raise DataError(
                f"{origin}: missing column {column!r} (set fetch.{canonical}_column); "
                f"columns found: {', '.join(map(str, frame.columns))}"
            )
    out = pd.DataFrame({canonical: frame[column] for canonical, column in wanted.items()})
    if cfg.id_column is None:
        out["id"] = [f"row-{i}" for i in range(len(out))]
    for column in COLUMNS:
        out[column] = out[column].fillna("").astype(str).str.replace("\r\n", "\n", regex=False)
    columns = list(COLUMNS)
    if cfg.heated_column is not None:
        out["heated"] = heated_flags(frame, cfg.heated_column, origin)
        columns.append("heated")
    return Dataset.from_pandas(out[columns], preserve_index=False)


def heated_flags(frame: pd.DataFrame, column: str, origin: str) -> list[bool]:
    """The `fetch.heated_column` column as booleans (true/false, 1/0, yes/no, any case)."""
    if column not in frame.columns:
        raise DataError(f"{origin}: missing column {column!r} (set fetch.heated_column, or null for none); "
                        f"columns found: {', '.join(map(str, frame.columns))}")
    flags = []
    for row, value in enumerate(frame[column].tolist()):
        word = "" if value is None else str(value).strip().lower()
        if word not in TRUE_WORDS | FALSE_WORDS:
            raise DataError(f"{origin}: column {column!r}, row {row}: {value!r} is not true/false")
        flags.append(word in TRUE_WORDS)
    return flags


def read_jsonl_split(path: Path) -> Dataset:
    if not path.is_file():
        raise DataError(f"{path}: not found; run the previous stage (dvc repro)")
    return Dataset.from_pandas(read_table(path).astype(str), preserve_index=False)
