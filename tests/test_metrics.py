import pytest

from detoxsum.metrics import percent_change, rouge, toxicity_stats


def test_identical_texts_score_100():
    scores = rouge(["The cat sat on the mat. It slept."], [["The cat sat on the mat. It slept."]])
    assert scores == {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0, "rougeLsum": 100.0}


def test_best_of_several_references_counts():
    single = rouge(["alice books a table"], [["bob fixes the bike"]])
    multi = rouge(["alice books a table"], [["bob fixes the bike", "alice books a table"]])
    assert single["rouge1"] == 0.0 and multi["rouge1"] == 100.0


def test_stemming_matches_inflections():
    assert rouge(["she booked tables"], [["she books table"]])["rouge1"] == 100.0


def test_rouge_lsum_uses_sentence_splits():
    # Two sentences in swapped order: LCS over the whole text is short, summary-level LCS is full.
    scores = rouge(["Tom pays the rent. Ann buys milk."], [["Ann buys milk. Tom pays the rent."]])
    assert scores["rougeLsum"] == 100.0 and scores["rougeL"] < 100.0


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        rouge(["a"], [])


def test_toxicity_stats_and_change():
    stats = toxicity_stats([0.1, 0.3, 0.9])
    assert stats["mean"] == pytest.approx(0.4333, abs=1e-4)
    assert stats["std"] == pytest.approx(0.3399, abs=1e-4)
    assert stats["frac_toxic"] == pytest.approx(1 / 3, abs=1e-4)
    assert toxicity_stats([]) == {"mean": 0.0, "std": 0.0, "frac_toxic": 0.0}
    assert percent_change(0.2, 0.1) == -50.0
