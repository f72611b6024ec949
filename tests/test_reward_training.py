"""The held-out checks train_reward reports beside accuracy: whether length alone would do."""

import torch

from detoxsum.data.preferences import PreferencePair
from detoxsum.training.reward_training import length_checks


def test_length_checks_score_the_shorter_wins_rule_and_the_model_where_that_rule_fails():
    pairs = [PreferencePair("d", "short one", "a much longer rude one"),     # chosen shorter
             PreferencePair("d", "the complete summary here", "the complete"),  # chosen longer
             PreferencePair("d", "a longer faithful summary", "off topic"),     # chosen longer
             PreferencePair("d", "same length", "other words")]                # a tie counts half
    chosen, rejected = torch.tensor([1.0, -1.0, 2.0, 0.0]), torch.tensor([0.0, 1.0, 1.0, 1.0])
    checks = length_checks(pairs, chosen, rejected)
    assert checks["shorter_wins"] == 0.375
    # of the two pairs whose chosen summary is longer, the model prefers it in one
    assert checks["accuracy/chosen_longer"] == 0.5


def test_no_chosen_longer_pairs_means_no_such_accuracy():
    pairs = [PreferencePair("d", "short", "long and rude")]
    assert length_checks(pairs, torch.tensor([1.0]), torch.tensor([0.0])) == {"shorter_wins": 1.0}
