import json
import tempfile
import zipfile

import pandas as pd
import pytest
from conftest import fixture_rows
from datasets import Dataset

from detoxsum.config import FetchConfig, FilterConfig
from detoxsum.data import (
    SPLITS, drop_test_dialogues, filter_split, group_references, load_raw_splits, normalised, tokenize_split,
)
from detoxsum.errors import DataError
from detoxsum.modeling import IGNORE_INDEX, end_of_turn_id, load_model


def write_rows(path, rows, **rename):
    frame = pd.DataFrame(rows).rename(columns=rename)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:  # a JSON array, as SAMSum ships
        path.write_text(json.dumps(frame.to_dict(orient="records")))
    return path


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl", ".parquet"])
def test_single_file_is_split_three_ways(tmp_path, suffix):
    source = write_rows(tmp_path / f"all{suffix}", fixture_rows(40))
    splits = load_raw_splits(FetchConfig(dataset=str(source), validation_fraction=0.1, test_fraction=0.2), seed=1)
    assert {name: len(splits[name]) for name in SPLITS} == {"train": 28, "validation": 4, "test": 8}
    assert splits["train"].column_names == ["id", "dialogue", "summary"]
    ids = [set(splits[name]["id"]) for name in SPLITS]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


def test_zip_of_split_files_with_renamed_columns(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    renames = {"dialogue": "conversation", "summary": "abstract"}
    for name, count in (("train", 12), ("val", 3), ("test", 4)):
        rows = fixture_rows(count, prefix=name)
        rows[0]["dialogue"] = rows[0]["dialogue"].replace("\n", "\r\n")
        write_rows(folder / f"{name}.json", rows, **renames)
    archive = tmp_path / "corpus.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for file in folder.iterdir():
            handle.write(file, f"corpus/{file.name}")
    cfg = FetchConfig(dataset=str(archive), dialogue_column="conversation", summary_column="abstract")
    splits = load_raw_splits(cfg, seed=0)
    assert [len(splits[name]) for name in SPLITS] == [12, 3, 4]
    assert "\r" not in splits["train"][0]["dialogue"]


def test_a_zip_leaves_no_extracted_copy_and_errors_name_the_file_inside_it(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    archive = tmp_path / "chats.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("chats/train.jsonl", json.dumps({"id": "1", "dialogue": "hi", "summary": "s"}) + "\n")
        handle.writestr("chats/test.jsonl", "{not json\n")
    with pytest.raises(DataError, match=r"chats\.zip/chats/test\.jsonl: cannot read as jsonl"):
        load_raw_splits(FetchConfig(dataset=str(archive)), seed=0)
    assert list((tmp_path / "scratch").iterdir()) == []


def split_dialogues(split):
    return {normalised(dialogue) for dialogue in split["dialogue"]}


def test_carved_splits_share_no_dialogue_and_drop_duplicate_pairs_first(tmp_path):
    """One file with repeated rows and dialogues that have three references each (DialogSum's
    layout): each dialogue lands in one split with all its references, and no pair twice."""
    rows = fixture_rows(40)
    repeated = [dict(row, id=f"again-{i}") for i, row in enumerate(rows[:10])]
    referenced = [dict(row, id=f"{row['id']}-ref{k}", summary=f"{row['summary']} Take {k}.")
                  for row in rows[10:16] for k in (1, 2)]
    source = write_rows(tmp_path / "all.jsonl", rows + repeated + [dict(row, dialogue=row["dialogue"] + "\n")
                                                                  for row in repeated] + referenced)
    for seed in range(5):
        splits = load_raw_splits(FetchConfig(dataset=str(source), test_fraction=0.2, validation_fraction=0.2), seed)
        assert sum(len(splits[name]) for name in SPLITS) == 40 + 12
        for first, second in [("train", "test"), ("train", "validation"), ("validation", "test")]:
            assert not split_dialogues(splits[first]) & split_dialogues(splits[second])
        multi = {normalised(row["dialogue"]) for row in rows[10:16]}
        for name in SPLITS:
            references = [normalised(d) for d in splits[name]["dialogue"] if normalised(d) in multi]
            assert all(references.count(d) == 3 for d in references)


def test_published_splits_that_overlap_keep_test_and_lose_the_leaked_dialogues_elsewhere():
    rows = fixture_rows(12)
    kept = {"test": Dataset.from_list(rows[:4]),
            "validation": Dataset.from_list(rows[3:6] + [dict(rows[0], summary="Another reference.")]),
            "train": Dataset.from_list(rows[1:2] + rows[5:12])}
    counts = drop_test_dialogues(kept)
    assert kept["test"]["id"] == [row["id"] for row in rows[:4]]
    assert kept["validation"]["id"] == [rows[4]["id"], rows[5]["id"]]
    assert kept["train"]["id"] == [row["id"] for row in rows[6:12]]
    assert counts == {"validation": {"dropped_in_test": 2},
                      "train": {"dropped_in_test": 1, "dropped_in_validation": 1}}


def test_a_header_only_csv_is_named_as_having_no_rows(tmp_path):
    source = tmp_path / "chats.csv"
    source.write_text("id,dialogue,summary\n")
    with pytest.raises(DataError, match=r"chats\.csv: no rows to train on"):
        load_raw_splits(FetchConfig(dataset=str(source)), seed=0)


def test_a_csv_with_a_byte_order_mark_keeps_its_first_column_name(tmp_path):
    source = tmp_path / "chats.csv"
    write_rows(source, [{k: v for k, v in row.items() if k != "heated"} for row in fixture_rows(12)],
               id="dialogue_id")
    frame = pd.read_csv(source)[["dialogue", "summary", "dialogue_id"]]  # `dialogue` first, as Excel writes it
    source.write_bytes(b"\xef\xbb\xbf" + frame.to_csv(index=False).encode())
    splits = load_raw_splits(FetchConfig(dataset=str(source), id_column="dialogue_id"), seed=0)
    assert sum(len(splits[name]) for name in SPLITS) == 12


def test_row_caps_sample_each_split(tmp_path):
    source = write_rows(tmp_path / "train.jsonl", fixture_rows(30))
    splits = load_raw_splits(FetchConfig(dataset=str(source), max_train_rows=5, max_test_rows=2), seed=0)
    assert len(splits["train"]) == 5 and len(splits["test"]) == 2


def test_missing_column_names_file_and_key(tmp_path):
    source = write_rows(tmp_path / "train.csv", fixture_rows(10), summary="abstract")
    with pytest.raises(DataError, match=r"train\.csv: missing column 'summary' \(set fetch\.summary_column\)"):
        load_raw_splits(FetchConfig(dataset=str(source)), seed=0)


def test_missing_local_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_raw_splits(FetchConfig(dataset=str(tmp_path / "nope.jsonl")), seed=0)


def test_a_missing_relative_folder_says_so_rather_than_only_blaming_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"'mydata/chats' is no local file or folder \(from .*\)") as raised:
        load_raw_splits(FetchConfig(dataset="mydata/chats"), seed=0)
    assert "\n" not in str(raised.value)


def test_unknown_hub_dataset_offline():
    with pytest.raises(DataError, match=r"fetch\.dataset: 'nobody/no-such-dataset' is no local file or folder .*"
                                        r"and the Hub has no dataset of that name"):
        load_raw_splits(FetchConfig(dataset="nobody/no-such-dataset"), seed=0)


def test_filter_counts_each_reason_and_keeps_multi_reference_rows():
    long_dialogue = "#Person1#: " + "word " * 300
    base = fixture_rows(3)
    rows = [
        base[0],
        {**base[0], "id": "dup"},  # exact duplicate
        {**base[0], "id": "second-ref", "summary": "Another reference."},  # same dialogue, new reference
        {"id": "e1", "dialogue": "   \n ", "summary": "x"},
        {"id": "e2", "dialogue": base[1]["dialogue"], "summary": ""},
        {"id": "short", "dialogue": "#Person1#: Hi.", "summary": "Greeting."},
        {"id": "long", "dialogue": long_dialogue, "summary": "Long."},
        base[2],
    ]
    kept, counts = filter_split(Dataset.from_list(rows), FilterConfig(min_chars=50, max_chars=1000))
    assert kept["id"] == ["row-0", "second-ref", "row-2"]
    assert counts == {"rows_in": 8, "kept": 3, "dropped_empty": 2, "dropped_duplicate": 1,
                      "dropped_too_short": 1, "dropped_too_long": 1}


def test_filter_token_bounds():
    rows = fixture_rows(4)
    cfg = FilterConfig(min_chars=0, max_chars=10_000, max_tokens=5)
    kept, counts = filter_split(Dataset.from_list(rows), cfg, count_tokens=lambda text: len(text.split()))
    assert len(kept) == 0 and counts["dropped_too_long"] == 4


def test_group_references_keeps_order_and_all_references():
    rows = [{"id": "a1", "dialogue": "A", "summary": "ra1"}, {"id": "b1", "dialogue": "B", "summary": "rb1"},
            {"id": "a2", "dialogue": "A", "summary": "ra2"}]
    dialogues, references, ids = group_references(Dataset.from_list(rows))
    assert dialogues == ["A", "B"] and references == [["ra1", "ra2"], ["rb1"]] and ids == ["a1", "b1"]


def test_tokenize_masks_prompt_and_ends_with_end_of_turn(tiny_model_dir):
    _, tokenizer, family = load_model(tiny_model_dir)
    split = Dataset.from_list(fixture_rows(3))
    features = tokenize_split(split, tokenizer, family, "Summarize: {dialogue}\nSummary:", 48, 12)
    row = features[0]
    labels = [token for token in row["labels"] if token != IGNORE_INDEX]
    assert labels[-1] == end_of_turn_id(tokenizer)
    assert len(labels) <= 12
    if family.name == "decoder-only":
        prompt_length = len(row["input_ids"]) - len(labels)
        assert prompt_length <= 48
        assert row["labels"][:prompt_length] == [IGNORE_INDEX] * prompt_length
        assert row["input_ids"][prompt_length:] == labels
    else:
        assert len(row["input_ids"]) <= 48
    assert tokenizer.decode(labels, skip_special_tokens=True).strip().startswith("#Person1# asks")


def test_heated_column_becomes_booleans_and_bad_values_name_file_column_and_row(tmp_path):
    rows = [dict(row, heated=flag) for row, flag in zip(fixture_rows(6), ["yes", "false", "1", "0", "True", "no"])]
    data = write_rows(tmp_path / "all.jsonl", rows)
    splits = load_raw_splits(FetchConfig(dataset=str(data), heated_column="heated", test_fraction=0.34,
                                         validation_fraction=0.17), seed=0)
    flags = {row["id"]: row["heated"] for split in splits.values() for row in split}
    assert flags == {f"row-{i}": i in (0, 2, 4) for i in range(6)}
    rows[3]["heated"] = "maybe"
    write_rows(data, rows)
    with pytest.raises(DataError, match=r"all\.jsonl: column 'heated', row 3: 'maybe'"):
        load_raw_splits(FetchConfig(dataset=str(data), heated_column="heated"), seed=0)
    with pytest.raises(DataError, match="fetch.heated_column"):
        load_raw_splits(FetchConfig(dataset=str(data), heated_column="angry"), seed=0)
