"""select_reward: the file train_ppo depends on changes with the trained reward model only when
`train_ppo.reward.kind` is `trained`."""

import pytest

from detoxsum.config import RewardSpec
from detoxsum.errors import ModelLoadError
from detoxsum.stages.select_reward import reward_selection


def write_model(folder, weights: bytes):
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text("{}")


def test_a_classifier_reward_ignores_the_trained_model(tmp_path):
    spec = RewardSpec(kind="profanity-check")
    write_model(tmp_path / "reward", b"first")
    first = reward_selection(spec, tmp_path / "reward")
    write_model(tmp_path / "reward", b"retrained")
    assert reward_selection(spec, tmp_path / "reward") == first
    assert reward_selection(spec, tmp_path / "missing") == first  # not even needed on disk


def test_a_trained_reward_follows_the_model_bytes(tmp_path):
    spec = RewardSpec(kind="trained")
    write_model(tmp_path / "reward", b"first")
    first = reward_selection(spec, tmp_path / "reward")
    assert reward_selection(spec, tmp_path / "reward") == first
    write_model(tmp_path / "reward", b"retrained")
    assert reward_selection(spec, tmp_path / "reward")["model_digest"] != first["model_digest"]


def test_a_trained_reward_without_its_model_names_the_stage_to_run(tmp_path):
    with pytest.raises(ModelLoadError, match=r"reward: no such folder; run the train_reward stage"):
        reward_selection(RewardSpec(kind="trained"), tmp_path / "reward")
