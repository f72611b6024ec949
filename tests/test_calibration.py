"""scoring/calibration.py and the calibrate stage: ROC AUC, floor and insult mean of a classifier on
labelled lines, and the errors a bad calibration file gives (one line naming file and row)."""

import json
import shutil

import numpy as np
import pytest
import yaml
from pipeline import REPO, run_stage_module
from sklearn.metrics import roc_auc_score

from detoxsum.errors import DataError
from detoxsum.scoring.calibration import auc, calibration_figures, read_calibration_set


def test_a_classifier_that_ranks_every_insult_first_scores_auc_one_and_a_constant_one_is_flagged():
    is_insult = [True, True, False, False, False]
    ranked = calibration_figures([0.9, 0.8, 0.1, 0.2, 0.3], is_insult, resamples=200, seed=0)
    assert ranked["auc"] == 1.0 and not ranked["near_chance"]
    assert ranked["floor"] == pytest.approx(0.2) and ranked["insult_mean"] == pytest.approx(0.85)
    flat = calibration_figures([0.3] * 5, is_insult, resamples=200, seed=0)  # hatesonar-like: one score for all
    assert flat["auc"] == 0.5 and flat["near_chance"] and flat["floor"] == pytest.approx(0.3)
    backwards = calibration_figures([0.1, 0.2, 0.9, 0.8, 0.7], is_insult, resamples=200, seed=0)
    assert backwards["auc"] == 0.0 and backwards["near_chance"]


def test_auc_equals_sklearns_with_ties_for_one_set_and_for_a_stack_of_resamples():
    rng = np.random.default_rng(0)
    insults, clean = rng.integers(0, 5, (30, 12)) / 4, rng.integers(0, 4, (30, 20)) / 4  # coarse scores: many ties
    labels = np.r_[np.ones(12), np.zeros(20)]
    expected = [roc_auc_score(labels, np.r_[i, c]) for i, c in zip(insults, clean)]
    assert auc(insults, clean) == pytest.approx(expected, abs=1e-12)
    assert auc(insults[0], clean[0]) == pytest.approx(expected[0], abs=1e-12)


def test_a_bad_label_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "lines.jsonl"
    rows = [{"text": "you idiot", "label": "insult"}, {"text": "thanks", "label": "clean"},
            {"text": "hm", "label": "toxic"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataError, match=r"lines\.jsonl: line 3: the label must be one of insult, clean.*'toxic'"):
        read_calibration_set(path)
    path.write_text('{"text": "thanks", "label": "clean"}\n{not json\n')
    with pytest.raises(DataError, match=r"lines\.jsonl: line 2 is not JSON"):
        read_calibration_set(path)
    path.write_text('{"text": "thanks", "label": "clean"}\n')
    with pytest.raises(DataError, match="needs both insult and clean lines"):
        read_calibration_set(path)


def test_the_committed_set_holds_both_labels_by_its_stated_rule():
    lines = read_calibration_set(REPO / "data/calibration/insults.jsonl")
    assert 250 <= len(lines.texts) <= 500 and 50 <= sum(lines.is_insult) <= len(lines.texts) - 50
    by_text = dict(zip(lines.texts, lines.is_insult))
    assert by_text["Don't call me an idiot. It was drying out in there."] is False  # mentions an insult only
    assert by_text["Mind your own business, you nosy loser."] is True


@pytest.fixture
def workdir(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["evaluate"]["toxicity_classifiers"] = [{"name": "profanity_check", "kind": "profanity-check"}]
    params["evaluate"]["bootstrap_resamples"] = 100
    params["train_ppo"]["reward"] = {"kind": "profanity-check", "output": "prob"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data/calibration").mkdir(parents=True)
    rows = [{"id": f"d:{i}", "text": text, "label": label} for i, (text, label) in enumerate(
        [("You're a fucking idiot.", "insult"), ("Shut up, you stupid bastard.", "insult"),
         ("Thanks, see you on Monday.", "clean"), ("The meeting moved to room 4B.", "clean"),
         ("Could you pass the salt?", "clean")])]
    (tmp_path / "data/calibration/insults.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return tmp_path


def test_calibrate_writes_each_classifiers_auc_floor_and_insult_mean(workdir):
    result = run_stage_module("calibrate", workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((workdir / "metrics/calibration.json").read_text())
    assert (metrics["insult_lines"], metrics["clean_lines"]) == (2, 3)
    figures = metrics["classifiers"]["profanity_check"]
    assert figures["auc"] == 1.0 and figures["floor"] < 0.5 < figures["insult_mean"]
    assert "calibrate: profanity_check: AUC 1.000" in result.stdout
    # PPO's reward, scored as minus its reward: here the same model as the judge
    reward = metrics["reward"]
    assert reward["kind"] == "profanity-check" and reward["auc"] == 1.0
    assert reward["floor"] == pytest.approx(figures["floor"], abs=1e-4)


def test_calibrate_stops_at_a_bad_label_with_one_line_and_no_metrics(workdir):
    path = workdir / "data/calibration/insults.jsonl"
    path.write_text(path.read_text() + '{"id": "d:9", "text": "meh", "label": "rude"}\n')
    result = run_stage_module("calibrate", workdir)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: data/calibration/insults.jsonl: line 6: the label must be one of insult, clean, beside a text; "
        "got 'rude'")
    assert not (workdir / "metrics/calibration.json").exists()
