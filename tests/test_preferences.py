"""Preference pairs: both layouts map to (dialogue, chosen, rejected, family), bad files stop with one
error naming the file and what to fix, held-out pairs come from unseen dialogues, and the committed
default pairs use training dialogues only."""

import json
import zipfile
from pathlib import Path

import pytest

from detoxsum.config import TrainRewardConfig, build_config
from detoxsum.errors import DataError, ParamsError
from detoxsum.data.preferences import PreferencePair, load_preference_pairs, split_by_dialogue

REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_pairs_layout_reads_the_configured_columns(tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", [
        {"chat": "A: hi\nB: hello", "good": "They greet.", "bad": "Idiots greet.", "kind": "polite_vs_rude"},
        {"chat": "A: rent?\nB: paid", "good": "B paid rent.", "bad": "B bought a bike.", "kind": ""},
    ])
    cfg = TrainRewardConfig(dataset=str(data), dialogue_column="chat", chosen_column="good", rejected_column="bad",
                            family_column="kind")
    pairs, origin, dropped = load_preference_pairs(cfg, seed=0)
    assert origin == str(data) and dropped == {"empty_field": 0, "chosen_equals_rejected": 0}
    assert pairs == [PreferencePair("A: hi\nB: hello", "They greet.", "Idiots greet.", "polite_vs_rude"),
                     PreferencePair("A: rent?\nB: paid", "B paid rent.", "B bought a bike.", "all")]


def test_summarize_from_feedback_layout_takes_the_chosen_index(tmp_path):
    rows = [{"info": {"post": f"post {i}", "title": "t"}, "choice": i % 2,
             "summaries": [{"text": f"first {i}"}, {"text": f"second {i}"}]} for i in range(3)]
    data = tmp_path / "comparisons.zip"
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr("comparisons/train.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
        archive.writestr("comparisons/test.jsonl", "")
    pairs, origin, _ = load_preference_pairs(TrainRewardConfig(dataset=str(data), layout="summarize_from_feedback"), 0)
    assert origin == f"{data}/comparisons/train.jsonl"
    assert [(p.dialogue, p.chosen, p.rejected) for p in pairs] == [
        ("post 0", "first 0", "second 0"), ("post 1", "second 1", "first 1"), ("post 2", "first 2", "second 2")]


def test_a_missing_chosen_column_names_the_file_the_column_and_the_columns_found(tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", [{"dialogue": "d", "better": "a", "rejected": "b"}] * 3)
    with pytest.raises(DataError, match=r"prefs\.jsonl: no column 'chosen' \(train_reward\.chosen_column\); "
                                        r"columns found: dialogue, better, rejected"):
        load_preference_pairs(TrainRewardConfig(dataset=str(data)), 0)


def test_chosen_equal_to_rejected_in_every_row_is_refused(tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", [{"dialogue": f"d{i}", "chosen": "same", "rejected": "same"}
                                                  for i in range(4)])
    with pytest.raises(DataError, match=r"prefs\.jsonl: chosen equals rejected in every row \(4\)"):
        load_preference_pairs(TrainRewardConfig(dataset=str(data)), 0)


def test_pairs_dropped_are_counted_by_reason(tmp_path):
    rows = [{"dialogue": f"d{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(3)]
    rows += [{"dialogue": "d3", "chosen": "same", "rejected": "same"}, {"dialogue": "d4", "chosen": "", "rejected": "x"}]
    pairs, _, dropped = load_preference_pairs(TrainRewardConfig(dataset=str(write_jsonl(tmp_path / "p.jsonl", rows))), 0)
    assert [pair.dialogue for pair in pairs] == ["d0", "d1", "d2"]
    assert dropped == {"empty_field": 1, "chosen_equals_rejected": 1}


@pytest.mark.parametrize(("text", "message"), [
    ("", r"prefs\.jsonl: the file is empty$"),
    ("\n  \n", r"prefs\.jsonl: the file is empty$"),
    ('{"dialogue": "d", "chosen": "a", "rejected": "b"}\n{"dialogue": "d2", "chosen": "a"\n',
     r"prefs\.jsonl: line 2 is not a JSON object \(Expecting ',' delimiter\)$"),
    ('{"dialogue": "d", "chosen": "a", "rejected": "b"}\n["d2", "a", "b"]\n', r"prefs\.jsonl: line 2 is not a JSON object \(found a list\)$"),
])
def test_an_empty_or_malformed_pair_file_says_so_in_one_line(tmp_path, text, message):
    data = tmp_path / "prefs.jsonl"
    data.write_text(text)
    with pytest.raises(DataError, match=message) as raised:
        load_preference_pairs(TrainRewardConfig(dataset=str(data)), 0)
    assert "\n" not in str(raised.value)


def test_fewer_than_two_usable_pairs_is_refused(tmp_path):
    rows = [{"dialogue": "d1", "chosen": "a", "rejected": "b"}, {"dialogue": "d2", "chosen": "a", "rejected": "a"},
            {"dialogue": "", "chosen": "a", "rejected": "b"}]
    data = tmp_path / "prefs.csv"
    data.write_text("dialogue,chosen,rejected\n" + "".join(f"{r['dialogue']},{r['chosen']},{r['rejected']}\n"
                                                          for r in rows))
    with pytest.raises(DataError, match=r"prefs\.csv: 1 usable preference pair\(s\) of 3 rows .* need at least 2"):
        load_preference_pairs(TrainRewardConfig(dataset=str(data)), 0)


def test_an_unknown_layout_names_the_key():
    with pytest.raises(ParamsError, match=r"train_reward\.layout' must be one of pairs, summarize_from_feedback"):
        build_config(TrainRewardConfig, {"layout": "anthropic_hh"}, "train_reward")


def test_held_out_pairs_come_from_dialogues_not_trained_on():
    pairs = [PreferencePair(f"dialogue {i // 2}", f"good {i}", f"bad {i}") for i in range(20)]
    train, held = split_by_dialogue(pairs, 0.2, seed=0)
    assert len(held) == 4 and len(train) == 16
    assert not {p.dialogue for p in train} & {p.dialogue for p in held}


def test_the_default_pairs_use_training_dialogues_only_and_length_does_not_tell_chosen_from_rejected():
    pairs = [json.loads(line) for line in (REPO / "data/preferences/pairs.jsonl").read_text().splitlines()]
    sample = {split: {json.loads(line)["dialogue"] for line in (REPO / f"data/sample/{split}.jsonl").open()}
              for split in ("train", "validation", "test")}
    assert {p["dialogue"] for p in pairs} == sample["train"]
    assert not {p["dialogue"] for p in pairs} & (sample["test"] | sample["validation"])
    assert {p["family"] for p in pairs} == {"polite_vs_rude", "faithful_vs_off_topic", "complete_vs_truncated"}
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    # A reward model learns any rule that separates the pairs; PPO then games it (shorter summaries).
    shorter_chosen = sum(len(p["chosen"].split()) < len(p["rejected"].split()) for p in pairs) / len(pairs)
    assert 0.4 < shorter_chosen < 0.6
