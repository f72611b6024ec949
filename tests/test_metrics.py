import pytest

import numpy as np

from detoxsum.scoring.metrics import (
    any_toxic, bootstrap_indices, change_interval, expected_max_toxicity, mean_interval, percent_change, rouge,
)


def test_identical_texts_score_100():
    scores = rouge(["The cat sat on the mat. It slept."], [["The cat sat on the mat. It slept."]])
    assert scores == {key: 100.0 for key in ("rouge1", "rouge2", "rougeL", "rougeLsum", "rouge1_pairs", "rouge2_pairs",
                                              "rougeL_pairs", "rougeLsum_pairs")}


def test_best_of_several_references_counts():
    single = rouge(["alice books a table"], [["bob fixes the bike"]])
    multi = rouge(["alice books a table"], [["bob fixes the bike", "alice books a table"]])
    assert single["rouge1"] == 0.0 and multi["rouge1"] == 100.0
    assert multi["rouge1_pairs"] == 50.0  # the mean over (summary, reference) pairs


def test_pairs_mean_weights_each_reference_as_evaluate_does_on_rows():
    """Hugging Face `evaluate` scores DialogSum's test split row by row, one reference per row: a
    dialogue with three references counts three times."""
    scores = rouge(["a b", "c d"], [["a b", "x y", "a b"], ["c d"]])
    assert scores["rouge1_pairs"] == round(100 * (1 + 0 + 1 + 1) / 4, 2)
    assert scores["rouge1"] == 100.0


def test_stemming_matches_inflections():
    assert rouge(["she booked tables"], [["she books table"]])["rouge1"] == 100.0


def test_rouge_lsum_uses_sentence_splits():
    # Two sentences in swapped order: LCS over the whole text is short, summary-level LCS is full.
    scores = rouge(["Tom pays the rent. Ann buys milk."], [["Ann buys milk. Tom pays the rent."]])
    assert scores["rougeLsum"] == 100.0 and scores["rougeL"] < 100.0


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        rouge(["a"], [])


def test_expected_max_and_toxicity_probability_per_dialogue():
    samples = [[0.1, 0.7, 0.2], [0.3, 0.2, 0.4], [0.5, 0.0, 0.0]]
    assert expected_max_toxicity(samples) == [0.7, 0.4, 0.5]
    assert any_toxic(samples) == [1.0, 0.0, 1.0]  # at least one sample >= 0.5


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_dialogues():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 20).tolist(), rng.normal(1.0, 1.0, 500).tolist()
    small_ci = mean_interval(small, bootstrap_indices(20, 1000, seed=1))
    large_ci = mean_interval(large, bootstrap_indices(500, 1000, seed=1))
    for ci in (small_ci, large_ci):
        assert ci["ci_low"] < ci["mean"] < ci["ci_high"]
    assert large_ci["ci_high"] - large_ci["ci_low"] < (small_ci["ci_high"] - small_ci["ci_low"]) / 2
    # a plain-loop check of one resample's statistic
    indices = bootstrap_indices(3, 2, seed=0)
    values = [1.0, 2.0, 6.0]
    resampled = [sum(values[i] for i in row) / 3 for row in indices]
    assert mean_interval(values, indices)["ci_low"] == pytest.approx(np.percentile(resampled, 2.5))


def test_paired_change_interval_excludes_zero_only_when_the_change_is_consistent():
    indices = bootstrap_indices(40, 1000, seed=0)
    before = [0.2 + 0.01 * (i % 7) for i in range(40)]
    halved = change_interval(before, [b / 2 for b in before], indices)
    assert halved["change_pct"] == -50.0 and halved["change_pct_ci_low"] == halved["change_pct_ci_high"] == -50.0
    noisy_after = [b * (0.5 if i % 2 else 1.5) for i, b in enumerate(before)]  # half better, half worse
    noisy = change_interval(before, noisy_after, indices)
    assert noisy["change_pct_ci_low"] < 0 < noisy["change_pct_ci_high"]
    assert percent_change(0.2, 0.1) == -50.0 and percent_change(0.0, 0.1) == 0.0


def test_distinct_2_is_one_without_repeats_and_falls_as_a_summary_loops():
    from detoxsum.scoring.metrics import distinct_ngrams

    assert distinct_ngrams("#Person1# asks #Person2# to pay the rent.") == 1.0
    assert distinct_ngrams("short") == 1.0 and distinct_ngrams("") == 1.0
    looping = "#Person1# (Shelby) and #Person2# (Shelby) and #Person1# (Shelby) and #Person2# (Shelby)"
    assert distinct_ngrams(looping) == 0.5  # 10 bigrams, 5 distinct
    assert distinct_ngrams("a pig is a pig is a pig") < distinct_ngrams("a pig is a dog")
