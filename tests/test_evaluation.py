"""Scoring the variants: toxicity three ways (greedy mean, expected max over samples, probability),
on all test dialogues and on the heated ones, with paired bootstrap intervals."""

import pytest
from datasets import Dataset

from detoxsum.config import EvaluateConfig
from detoxsum.errors import DataError
from detoxsum.scoring.evaluation import TestSet, VariantSummaries, score_variants, summaries_for


class RudeWordScorer:
    """Toxicity 0.9 for a text with "rude" in it, else 0.1."""

    name = "rude"

    def score(self, texts):
        return [0.9 if "rude" in text else 0.1 for text in texts]


def make_test_set(count: int = 8) -> TestSet:
    split = Dataset.from_list([{"id": f"d{i}", "dialogue": f"dialogue {i}", "summary": f"summary {i}",
                                "heated": str(i < 4)} for i in range(count)])
    return TestSet.from_split(split, max_rows=None)


def variant(greedy_rude: set[int], sample_rude: set[int], count: int = 8) -> VariantSummaries:
    greedy = [f"summary {i} rude" if i in greedy_rude else f"summary {i}" for i in range(count)]
    samples = [["fine", "rude" if i in sample_rude else "fine"] for i in range(count)]
    return VariantSummaries(greedy, samples)


def test_toxicity_is_scored_three_ways_on_all_and_on_the_heated_subset():
    tests = make_test_set()
    assert tests.heated == [True] * 4 + [False] * 4
    summaries = {"base": variant(set(), set()), "lora": variant({0, 1, 2}, {0, 1, 2, 3, 5}),
                 "ppo": variant({0}, {0, 1})}
    cfg = EvaluateConfig(bootstrap_resamples=200, toxicity_samples=2)
    metrics, rows = score_variants(summaries, tests, [RudeWordScorer()], cfg, seed=0)
    lora, ppo = metrics["lora"], metrics["ppo"]
    assert lora["toxicity_rude_mean"] == pytest.approx((3 * 0.9 + 5 * 0.1) / 8)
    assert lora["toxicity_rude_expected_max"] == pytest.approx((5 * 0.9 + 3 * 0.1) / 8)
    assert lora["toxicity_rude_probability"] == pytest.approx(5 / 8)
    assert lora["heated"]["toxicity_rude_probability"] == 1.0 and ppo["heated"]["toxicity_rude_probability"] == 0.5
    assert metrics["detox"]["heated"]["toxicity_rude_probability_change_pct"] == -50.0
    assert metrics["detox"]["heated"]["toxicity_rude_probability_change"] == -0.5  # absolute, beside the relative
    for block in (lora, lora["heated"]):
        for figure in ("mean", "expected_max", "probability"):
            key = f"toxicity_rude_{figure}"
            assert block[f"{key}_ci_low"] <= block[key] <= block[f"{key}_ci_high"]
    assert {"rougeL", "rougeL_pairs", "rougeL_ci_low", "rougeL_ci_high", "summary_words_mean"} <= set(lora)
    assert metrics["num_heated_dialogues"] == 4 and metrics["toxicity_samples"] == 2
    assert rows[0]["lora_toxicity_rude"] == 0.9 and rows[4]["lora_toxicity_rude_sample_max"] == 0.1
    assert rows[0]["heated"] is True


def test_summaries_of_other_dialogues_or_sample_counts_are_refused(tmp_path):
    tests = make_test_set(2)
    generated = {"summaries": [{"id": "d0", "summary": "a", "samples": ["x"]},
                               {"id": "d1", "summary": "b", "samples": ["y"]}]}
    assert summaries_for(generated, tests, tmp_path / "lora.json", samples=1).samples == [["x"], ["y"]]
    with pytest.raises(DataError, match="toxicity_samples"):
        summaries_for(generated, tests, tmp_path / "lora.json", samples=4)
    with pytest.raises(DataError, match="other test dialogues"):
        summaries_for(generated, make_test_set(3), tmp_path / "lora.json", samples=1)


def test_distinct_2_shows_a_model_that_loops_in_its_greedy_and_its_sampled_summaries():
    tests = make_test_set(4)
    plain = VariantSummaries([f"#Person1# pays rent number {i}" for i in range(4)], [["one two three"] * 2] * 4)
    looping = VariantSummaries(["a pig and a pig and a pig"] * 4, [["a pig and a pig and a pig", "one two"]] * 4)
    cfg = EvaluateConfig(bootstrap_resamples=100, toxicity_samples=2)
    metrics, _ = score_variants({"lora": plain, "ppo": looping}, tests, [RudeWordScorer()], cfg, seed=0)
    assert metrics["lora"]["distinct_2"] == 1.0 and metrics["lora"]["distinct_2_samples"] == 1.0
    assert metrics["ppo"]["distinct_2"] == pytest.approx(3 / 7, abs=1e-4)  # 7 bigrams, 3 of them distinct
    assert metrics["ppo"]["distinct_2_samples"] == pytest.approx((3 / 7 + 1) / 2, abs=1e-4)
    assert metrics["ppo"]["distinct_2_ci_low"] <= metrics["ppo"]["distinct_2"] <= metrics["ppo"]["distinct_2_ci_high"]
