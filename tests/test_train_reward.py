"""The train_reward stage end to end on a tiny BERT, and its errors: one `error:` line, exit status 1,
nothing written."""

import json
import shutil

import pytest
import yaml
from pipeline import REPO, run_stage_module
from reward_fixtures import tiny_bert_reward, toy_pairs

from detoxsum.config import RewardSpec
from detoxsum.errors import ModelLoadError, ParamsError
from detoxsum.scoring.reward_model import TrainedReward


@pytest.fixture
def workdir(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    model, tokenizer = tiny_bert_reward()
    model.save_pretrained(tmp_path / "tiny-bert")
    tokenizer.save_pretrained(tmp_path / "tiny-bert")
    pairs = toy_pairs(12, "polite_vs_rude", seed=1) + toy_pairs(12, "faithful_vs_off_topic", seed=2)
    rows = [{"dialogue": p.dialogue, "chosen": p.chosen, "rejected": p.rejected, "family": p.family} for p in pairs]
    write_rows(tmp_path / "prefs.jsonl", rows)
    set_params(tmp_path, train="always", model=str(tmp_path / "tiny-bert"), dataset=str(tmp_path / "prefs.jsonl"),
               max_length=64, epochs=1, batch_size=4, eval_steps=2)
    return tmp_path


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def set_params(workdir, **values):
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["train_reward"].update(values)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))


def assert_nothing_written(workdir):
    assert not (workdir / "artifacts").exists() and not (workdir / "metrics").exists()


def test_unused_by_ppo_the_reward_model_is_not_trained_and_its_outputs_say_why(workdir):
    (workdir / "dvclive/train_reward/plots/metrics").mkdir(parents=True)
    (workdir / "dvclive/train_reward/plots/metrics/loss.tsv").write_text("step\tloss\n0\t1.0\n")  # an earlier model's
    set_params(workdir, train="when_used")  # train_ppo.reward.kind is the committed tox-block
    result = run_stage_module("train_reward", workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "not trained" in result.stdout and "train_ppo.reward.kind is 'tox-block'" in result.stdout
    notes = ("metrics/train_reward.json", "artifacts/reward/not_trained.json", "dvclive/train_reward/metrics.json",
             "dvclive/train_reward/plots/not_trained.json")
    for note in notes:
        assert json.loads((workdir / note).read_text())["trained"] is False
    assert [path.name for path in (workdir / "dvclive/train_reward/plots").iterdir()] == ["not_trained.json"]  # no stale curves
    with pytest.raises(ModelLoadError, match="no trained reward model found"):
        TrainedReward.load(workdir / "artifacts/reward")


def test_train_reward_writes_the_model_metrics_and_curves(workdir):
    rows = (workdir / "prefs.jsonl").read_text()
    same = [{"dialogue": f"tie {i}", "chosen": "equal", "rejected": "equal"} for i in range(2)]
    (workdir / "prefs.jsonl").write_text(rows + "".join(json.dumps(row) + "\n" for row in same))
    result = run_stage_module("train_reward", workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning: " in result.stderr and "dropped 2 pair(s) whose chosen equals rejected" in result.stderr
    metrics = json.loads((workdir / "metrics/train_reward.json").read_text())
    assert metrics["train_pairs"] + metrics["eval_pairs"] == 24
    assert metrics["dropped_pairs"] == {"empty_field": 0, "chosen_equals_rejected": 2}
    assert {"accuracy", "margin", "accuracy/polite_vs_rude", "accuracy/faithful_vs_off_topic"} <= set(metrics["after"])
    assert (workdir / "dvclive/train_reward/plots/metrics/loss.tsv").is_file()
    assert (workdir / "dvclive/train_reward/plots/metrics/eval/accuracy.tsv").is_file()
    reward = TrainedReward.load(workdir / "artifacts/reward")
    assert reward.max_length == 64 and reward.rewards(["about the coffee"], ["coffee please"]).shape == (1,)


@pytest.mark.parametrize(("rows", "fragments"), [
    ([{"dialogue": "d", "preferred": "a", "rejected": "b"}] * 3,
     ["prefs.jsonl", "no column 'chosen'", "train_reward.chosen_column", "columns found: dialogue, preferred, rejected"]),
    ([{"dialogue": f"d{i}", "chosen": "same", "rejected": "same"} for i in range(3)],
     ["prefs.jsonl", "chosen equals rejected in every row"]),
    ([{"dialogue": "d", "chosen": "a", "rejected": "b"}, {"dialogue": "d", "chosen": "", "rejected": "b"}],
     ["prefs.jsonl", "1 usable preference pair(s)", "need at least 2"]),
])
def test_a_bad_preference_file_stops_with_one_error_and_no_outputs(workdir, rows, fragments):
    write_rows(workdir / "prefs.jsonl", rows)
    result = run_stage_module("train_reward", workdir)
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert all(fragment in errors[0] for fragment in fragments), errors[0]
    assert_nothing_written(workdir)


def test_an_unknown_layout_stops_before_any_work(workdir):
    set_params(workdir, layout="hh_rlhf")
    result = run_stage_module("train_reward", workdir)
    assert result.returncode == 1 and "train_reward.layout" in result.stderr
    assert_nothing_written(workdir)


def test_a_trained_reward_scores_whole_summaries_only():
    with pytest.raises(ParamsError, match=r"train_ppo\.reward\.score_by' must be 'summary' with kind 'trained'"):
        RewardSpec(kind="trained", score_by="worst_sentence")
