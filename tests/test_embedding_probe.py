"""scoring/embedding_probe.py: MiniLM sentence embeddings with a logistic regression fitted on
labelled lines, the judge of kind `embedding-probe`."""

import json
import shutil
import sys

import pytest
import yaml
from pipeline import REPO, run

from detoxsum.config import ClassifierSpec
from detoxsum.errors import DataError, ModelLoadError, ParamsError
from detoxsum.scoring.reward import build_scorer

INSULTS = ["You're a useless idiot.", "Move, you selfish jerk.", "Get lost, you greedy scumbag.",
           "You pathetic liar.", "What a lazy, spoilt brat you are.", "You absolute moron."]
CLEAN = ["See you on Sunday at the station.", "The meeting moved to room 4B.", "Could you pass the salt?",
         "I'll pay the deposit by Friday.", "The bus was late again this morning.", "Thanks for the lift."]


def write_lines(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def train_file(tmp_path):
    rows = [{"text": text, "label": "insult"} for text in INSULTS] + [{"text": text, "label": "clean"} for text in CLEAN]
    return write_lines(tmp_path / "lines.jsonl", rows)


def probe(train_file, **fields):
    return build_scorer(ClassifierSpec(name="probe", kind="embedding-probe", train_file=str(train_file), **fields))


def test_a_probe_fitted_on_a_dozen_lines_ranks_unseen_insults_above_unseen_clean_text(train_file):
    scores = probe(train_file).score(["#Person1# calls #Person2# a stupid, lazy freeloader.",
                                      "You're a selfish pig.",
                                      "#Person1# and #Person2# agree to meet at the library.",
                                      "The parcel arrives on Tuesday."])
    assert min(scores[:2]) > max(scores[2:])
    assert all(0.0 <= score <= 1.0 for score in scores)


def test_a_batch_scores_as_each_text_alone_and_nothing_scores_nothing(train_file, monkeypatch):
    monkeypatch.setattr("detoxsum.scoring.embedding_probe.BATCH", 2)  # batches run by length: several here
    scorer = probe(train_file)
    texts = ["Thanks for the lift, see you soon, and say hello to your sister from me.", "You absolute moron.",
             "Fine.", "#Person1# calls #Person2# a lazy freeloader.", "OK then."]
    assert scorer.score(texts) == pytest.approx([scorer.score([text])[0] for text in texts], abs=1e-5)
    assert scorer.score([]) == []


def test_a_bad_label_in_its_training_lines_names_the_file_and_the_line(tmp_path):
    path = write_lines(tmp_path / "lines.jsonl", [{"text": "ok", "label": "clean"}, {"text": "bad", "label": "rude"}])
    with pytest.raises(DataError, match=r"^classifier probe\.train_file: .*lines\.jsonl: line 2: the label must be one "
                                        r"of insult, clean"):
        probe(path)
    with pytest.raises(DataError, match=r"^classifier probe\.train_file: .*missing\.jsonl: no such file"):
        probe(tmp_path / "missing.jsonl")


def test_an_unknown_packaged_encoder_names_the_classifiers_model_entry(train_file):
    with pytest.raises(ModelLoadError, match=r"^classifier probe\.model: unknown package 'pypi:nope'"):
        probe(train_file, model="pypi:nope")


def test_a_probe_without_training_lines_names_the_key():
    with pytest.raises(ParamsError, match=r"^params key 'classifier probe\.train_file' is needed"):
        ClassifierSpec(name="probe", kind="embedding-probe")


def test_a_judge_that_cannot_load_stops_generate_before_any_generation(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["evaluate"]["toxicity_classifiers"] = [
        {"name": "probe", "kind": "embedding-probe", "train_file": "data/calibration/gone.jsonl"}]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = run([sys.executable, "-m", "detoxsum.stages.generate", "lora"], tmp_path, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: classifier probe.train_file: data/calibration/gone.jsonl: no such file "
        "(scripts/make_calibration.py writes it)")
    assert not (tmp_path / "results").exists()  # no model loaded, nothing generated
