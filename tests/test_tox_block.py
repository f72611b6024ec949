"""scoring/tox_block.py: tox-block's LSTM rebuilt in torch from the package's own files."""

import io
import json
import pickle
from pathlib import Path

import pytest
import torch

from detoxsum.config import ClassifierSpec, RewardSpec
from detoxsum.errors import ModelLoadError, ParamsError
from detoxsum.scoring.reward import build_reward_model, build_scorer
from detoxsum.scoring.tox_block import (
    LABELS,
    SEQUENCE_LENGTH,
    ToxBlock,
    WordEncoder,
    _TokenizerUnpickler,
    hard_sigmoid,
    installed_tox_block,
)

REFERENCE = Path(__file__).parent / "data" / "tox_block_reference.json"


@pytest.fixture(scope="module")
def tox_block():
    return ToxBlock()


def test_the_rebuild_gives_the_packages_own_probabilities_under_tensorflow(tox_block):
    # scripts/tox_block_reference.py wrote these with tox-block 0.1.2 on TensorFlow: insults and clean
    # calibration lines, capitals and punctuation, unknown words, and texts past the 100-word window.
    reference = json.loads(REFERENCE.read_text())
    assert tuple(reference["labels"]) == LABELS
    texts = [row["text"] for row in reference["rows"]]
    expected = torch.tensor([row["probabilities"] for row in reference["rows"]])
    assert torch.allclose(tox_block.probabilities(texts), expected, atol=1e-5, rtol=1e-4)


def test_the_insult_label_ranks_insults_that_are_not_swear_words_above_clean_summaries(tox_block):
    insult = LABELS.index("insult")
    scores = tox_block.probabilities([
        "#Person2# (who is a scumbag) is charged with taking the entire lot to a dispute service.",
        "#Person1# calls #Person2# a petty, manipulative jerk.",
        "#Person1# and #Person2# agree to meet on Sunday at the station.",
        "#Person2# will pay the deposit back by Friday.",
    ])[:, insult]
    assert min(scores[:2]) > 5 * max(scores[2:])


def test_a_batch_scores_as_each_text_alone(tox_block):
    texts = ["you filthy pig", "Thanks for the lift.", "word " * 150 + "idiot"]
    together = tox_block.probabilities(texts)
    alone = torch.cat([tox_block.probabilities([text]) for text in texts])
    assert torch.allclose(together, alone, atol=1e-6)
    assert tox_block.probabilities([]).shape == (0, len(LABELS))


def test_words_are_split_as_keras_does_unknown_ones_dropped_the_last_100_kept_zeros_in_front():
    encoder = WordEncoder({"you": 1, "pig": 2, "rare": 25_000}, filters='!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n')
    rows = encoder.encode(["You, PIG! zzz rare", "pig " * 120 + "you", ""])
    assert rows.shape == (3, SEQUENCE_LENGTH)
    assert rows[0, -2:].tolist() == [1, 2] and not rows[0, :-2].any()  # "rare" is beyond the 20,000 kept
    assert rows[1, -1].item() == 1 and (rows[1, :-1] == 2).all()  # the window keeps the end
    assert not rows[2].any()


def test_hard_sigmoid_is_tf_keras_2s():
    x = torch.tensor([-5.0, -2.5, 0.0, 1.0, 2.5, 5.0])
    assert hard_sigmoid(x).tolist() == pytest.approx([0.0, 0.0, 0.5, 0.7, 1.0, 1.0])


def test_the_tokenizer_pickle_may_hold_no_other_class():
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    with pytest.raises(pickle.UnpicklingError, match="refusing builtins.print"):
        _TokenizerUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()


def test_the_reward_is_minus_the_label_probability_or_its_log_odds(tox_block):
    texts = ["you filthy pig", "See you on Sunday."]
    insult = tox_block.probabilities(texts)[:, LABELS.index("insult")]
    as_prob = build_reward_model(RewardSpec(kind="tox-block", label="insult", output="prob")).rewards(texts)
    as_log_odds = build_reward_model(RewardSpec(kind="tox-block", label="insult", output="log_odds")).rewards(texts)
    assert torch.allclose(as_prob, -insult, atol=1e-6)
    assert torch.allclose(as_log_odds, torch.log1p(-insult) - torch.log(insult), atol=1e-4)
    assert as_prob[0] < as_prob[1] and as_log_odds[0] < as_log_odds[1]


@pytest.mark.parametrize("build, owner", [
    (lambda: build_scorer(ClassifierSpec(name="judge", kind="tox-block", label="toxic")), "classifier judge"),
    (lambda: build_reward_model(RewardSpec(kind="tox-block", label="insult")), "train_ppo.reward"),
])
def test_a_missing_package_is_one_error_naming_the_params_entry(monkeypatch, build, owner):
    monkeypatch.setattr("detoxsum.scoring.tox_block.find_spec", lambda name: None)
    installed_tox_block.cache_clear()  # an instance loaded by an earlier test would hide the missing package
    with pytest.raises(ModelLoadError, match=rf"^{owner}: tox-block cannot load \(tox-block is not installed"):
        build()


@pytest.mark.parametrize("make, key", [
    (lambda: ClassifierSpec(name="judge", kind="tox-block"), "classifier judge.label"),
    (lambda: ClassifierSpec(name="judge", kind="tox-block", label="rude"), "classifier judge.label"),
    (lambda: RewardSpec(kind="tox-block", label="nothate"), "train_ppo.reward.label"),
    (lambda: RewardSpec(kind="toxblock"), "train_ppo.reward.kind"),
])
def test_a_bad_label_or_kind_names_its_key(make, key):
    with pytest.raises(ParamsError, match=rf"^params key '{key}'"):
        make()


def test_a_judge_and_the_reward_in_one_process_share_one_loaded_model():
    judge = build_scorer(ClassifierSpec(name="judge", kind="tox-block", label="toxic"))
    reward = build_reward_model(RewardSpec(kind="tox-block", label="insult", output="prob"))
    assert judge.model is reward.scorer.model
