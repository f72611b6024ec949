import json
import tempfile
import zipfile

import pandas as pd
import pytest
from conftest import fixture_rows
from datasets import Dataset

from detoxsum.config import FetchConfig, FilterConfig, HubRevisions
from detoxsum.data.features import tokenize_split
from detoxsum.data.filter import filter_split
from detoxsum.data.sources import hub_commit, load_raw_splits, split_words
from detoxsum.data.splits import SPLITS, drop_test_dialogues, group_references, normalised
from detoxsum.errors import DataError
from detoxsum.models.family import IGNORE_INDEX
from detoxsum.models.loading import load_model
from detoxsum.models.tokens import end_of_turn_id


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


@pytest.mark.parametrize("file_name, splits", [
    ("train.jsonl", {"train"}), ("val.csv", {"validation"}), ("dialogsum_train.csv", {"train"}),
    ("dialogsum_validation.csv", {"validation"}), ("samsum-test.json", {"test"}),
    ("dialogsum.dev.jsonl", {"validation"}),
    ("train-00000-of-00001.parquet", {"train"}), ("DialogSum_Test.csv", {"test"}),
    ("contest.csv", set()), ("trainer.csv", set()), ("all.csv", set()), ("train_test.csv", {"train", "test"}),
])
def test_a_split_is_a_whole_word_anywhere_in_the_file_name(file_name, splits):
    assert split_words(file_name) == splits


def write_dialogsum_folder(folder):
    """DialogSum as the circulating zip has it: dialogsum_{train,validation,test}.csv in one folder."""
    folder.mkdir(parents=True)
    for name, count in (("train", 12), ("validation", 3), ("test", 4)):
        write_rows(folder / f"dialogsum_{name}.csv", fixture_rows(count, prefix=name))
    return folder


def zipped(folder, archive):
    with zipfile.ZipFile(archive, "w") as handle:
        for file in sorted(folder.rglob("*")):
            handle.write(file, file.relative_to(folder.parent).as_posix())
    return archive


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "zip"])
def test_dialogsum_files_named_after_the_dataset_are_read_as_their_splits(tmp_path, packed):
    source = write_dialogsum_folder(tmp_path / "DialogSum_Data")
    if packed:
        source = zipped(source, tmp_path / "dialogsum.zip")
    splits = load_raw_splits(FetchConfig(dataset=str(source), heated_column=None), seed=0)
    assert [len(splits[name]) for name in SPLITS] == [12, 3, 4]
    assert splits["test"][0]["id"].startswith("test")


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "zip"])
def test_shards_of_one_split_are_read_together(tmp_path, packed):
    folder = tmp_path / "hub-export" / "data"
    folder.mkdir(parents=True)
    write_rows(folder / "train-00000-of-00002.parquet", fixture_rows(6, seed=1, prefix="a"))
    write_rows(folder / "train-00001-of-00002.parquet", fixture_rows(5, seed=2, prefix="b"))
    write_rows(folder / "test-00000-of-00001.parquet", fixture_rows(4, prefix="test"))
    source = zipped(folder.parent, tmp_path / "export.zip") if packed else folder.parent
    splits = load_raw_splits(FetchConfig(dataset=str(source), heated_column=None, validation_fraction=0.1), seed=0)
    assert len(splits["train"]) + len(splits["validation"]) == 11
    assert {row_id[0] for name in ("train", "validation") for row_id in splits[name]["id"]} == {"a", "b"}
    assert len(splits["test"]) == 4


def test_words_that_only_contain_a_split_name_are_not_splits(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_rows(folder / "train.csv", fixture_rows(12, prefix="train"))
    write_rows(folder / "trainer.csv", fixture_rows(30, prefix="trainer"))
    write_rows(folder / "contest.csv", fixture_rows(30, prefix="contest"))
    splits = load_raw_splits(FetchConfig(dataset=str(folder), heated_column=None), seed=0)
    assert sum(len(splits[name]) for name in SPLITS) == 12


def test_an_ambiguous_folder_is_one_error_that_lists_every_file_at_fault(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "old").mkdir(parents=True)
    for name in ("train.csv", "old/dialogsum_train.csv", "train_test.csv", "validation-00000-of-00002.parquet"):
        write_rows(folder / name, fixture_rows(5))
    with pytest.raises(DataError) as raised:
        load_raw_splits(FetchConfig(dataset=str(folder), heated_column=None), seed=0)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{folder}: cannot tell the splits apart")
    for named in ("train: old/dialogsum_train.csv, train.csv", "train_test.csv names test and train",
                  "validation: validation-00000-of-00002.parquet"):
        assert named in message


def test_a_folder_without_a_training_file_lists_what_it_found(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_rows(folder / "dialogsum_test.csv", fixture_rows(5))
    write_rows(folder / "notes.csv", fixture_rows(5))
    with pytest.raises(DataError, match=r"corpus: no training file found .*found dialogsum_test\.csv, notes\.csv\)"):
        load_raw_splits(FetchConfig(dataset=str(folder), heated_column=None), seed=0)


def test_shards_with_different_columns_name_the_odd_shard(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_rows(folder / "train-00000-of-00002.parquet", fixture_rows(5))
    write_rows(folder / "train-00001-of-00002.parquet", fixture_rows(5), summary="abstract")
    with pytest.raises(DataError, match=r"train-00001-of-00002\.parquet: columns .* differ from .*train-00000-of-00002"):
        load_raw_splits(FetchConfig(dataset=str(folder), heated_column=None), seed=0)


def test_a_zip_leaves_no_extracted_copy_and_errors_name_the_file_inside_it(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    archive = tmp_path / "chats.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("chats/train.jsonl", json.dumps({"id": "1", "dialogue": "hi", "summary": "s"}) + "\n")
        handle.writestr("chats/test.jsonl", "{not json\n")
    with pytest.raises(DataError, match=r"chats\.zip/chats/test\.jsonl: line 1 is not a JSON object"):
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


def test_a_missing_relative_folder_names_the_folder_it_was_looked_up_from(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"fetch\.dataset: mydata/chats: no such file or folder \(from .*\)") as raised:
        load_raw_splits(FetchConfig(dataset="mydata/chats"), seed=0)
    assert "\n" not in str(raised.value)


def test_a_hub_id_in_fetch_dataset_points_to_fetch_hub_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"fetch\.dataset: knkarthick/dialogsum: no such file .*fetch\.hub_dataset"):
        load_raw_splits(FetchConfig(dataset="knkarthick/dialogsum"), seed=0)


def test_unknown_hub_dataset_offline():
    with pytest.raises(DataError, match=r"fetch\.hub_dataset: the Hub has no dataset 'nobody/no-such-dataset' "
                                        r"at revision 'v1' here \(.+\)"):
        load_raw_splits(FetchConfig(hub_dataset="nobody/no-such-dataset", revision=HubRevisions(dataset="v1")), seed=0)


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


def test_a_hub_commit_is_read_from_the_hub_cache_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    refs = tmp_path / "datasets--knkarthick--dialogsum" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("a" * 40)
    (refs / "v1.0").write_text("b" * 40 + "\n")
    assert hub_commit("knkarthick/dialogsum", None) == "a" * 40
    assert hub_commit("knkarthick/dialogsum", "v1.0") == "b" * 40
    assert hub_commit("knkarthick/dialogsum", "c" * 40) == "c" * 40  # a commit already
    assert hub_commit("knkarthick/dialogsum", "never-fetched") is None
    assert hub_commit("nobody/else", None) is None
