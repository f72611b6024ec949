"""The promotion gate: the fixed-tolerance rule, and the paired rule over per-dialogue predictions."""

import pytest
from workspace import evaluate_metrics, prediction_rows

from detoxsum.config import RegisterConfig
from detoxsum.errors import DataError, ParamsError
from detoxsum.ship.promotion import (
    GateScores, PairedChange, gate_scores, paired_changes, paired_decision, promotion_decision,
)

CFG = RegisterConfig(model_name="tiny-summarizer", experiment="tests", rouge_tolerance=0.5)
N = 12  # test dialogues in the paired tests


# --- the fixed-tolerance gate (champions logged without predictions) ---------------------------


def test_first_model_is_promoted_for_lack_of_a_champion():
    decision = promotion_decision(GateScores(rouge=1.0, toxicity=0.9), None, CFG)
    assert decision.promote and decision.reason == "no champion yet"


def test_promoted_when_rouge_within_tolerance_and_not_more_toxic():
    decision = promotion_decision(GateScores(29.6, 0.05), GateScores(30.0, 0.05), CFG, "champion v2")
    assert decision.promote
    assert "rougeL 29.60 >= 29.50" in decision.reason and "champion v2" in decision.reason


def test_refused_when_rouge_drops_beyond_tolerance():
    decision = promotion_decision(GateScores(29.4, 0.01), GateScores(30.0, 0.05), CFG)
    assert not decision.promote
    assert decision.reason.startswith("rougeL 29.40 < 29.50") and "toxicity" not in decision.reason


def test_refused_when_more_toxic_and_both_failures_are_named():
    more_toxic = promotion_decision(GateScores(31.0, 0.06), GateScores(30.0, 0.05), CFG)
    assert not more_toxic.promote and "toxicity_profanity_check_mean 0.0600 > 0.0500" in more_toxic.reason
    both = promotion_decision(GateScores(20.0, 0.06), GateScores(30.0, 0.05), CFG)
    assert "rougeL" in both.reason and "toxicity" in both.reason


def test_unknown_toxicity_classifier_names_the_params_key():
    cfg = RegisterConfig(toxicity_classifier="roberta")
    with pytest.raises(ParamsError, match="register.toxicity_classifier.*profanity_check"):
        gate_scores(evaluate_metrics(20.0, 0.1), cfg)


# --- the paired gate -----------------------------------------------------------------------------


def references_of(rows):
    return [row["references"][0] for row in rows]


def rows_with(summaries_of, toxicity, model="ppo"):
    """N prediction rows whose summaries are summaries_of(references) and whose toxicity is given."""
    template = prediction_rows(["x"] * N, [0.0] * N, model)
    return prediction_rows(summaries_of(references_of(template)), [toxicity] * N, model)


def faithful(references):
    return list(references)


def off_topic(references):
    return ["The weather was mild and the trains ran on time." for _ in references]


def test_an_equal_candidate_is_promoted_and_the_reason_gives_the_intervals():
    champion, candidate = rows_with(faithful, 0.1, "lora"), rows_with(faithful, 0.1)
    rouge, toxicity, dialogues = paired_changes(candidate, "ppo", champion, "lora", CFG, seed=0)
    assert dialogues == N and rouge == PairedChange(0.0, 0.0, 0.0) and toxicity.change == 0.0
    decision = paired_decision(rouge, toxicity, CFG, dialogues, "champion v2")
    assert decision.promote
    assert "rougeL vs champion v2 +0.00 (95 % CI +0.00 to +0.00) on 12 test dialogues" in decision.reason


def test_a_significantly_worse_summarizer_is_refused_whatever_its_mean_rouge_tolerance():
    rouge, toxicity, dialogues = paired_changes(rows_with(off_topic, 0.1), "ppo", rows_with(faithful, 0.1), "ppo",
                                                CFG, seed=0)
    assert rouge.ci_high < 0
    decision = paired_decision(rouge, toxicity, CFG, dialogues)
    assert not decision.promote and "significantly lower" in decision.reason and "toxicity" not in decision.reason


def test_a_significantly_more_toxic_summarizer_is_refused():
    rouge, toxicity, dialogues = paired_changes(rows_with(faithful, 0.6), "ppo", rows_with(faithful, 0.1), "ppo",
                                                CFG, seed=0)
    assert toxicity.ci_low > 0
    decision = paired_decision(rouge, toxicity, CFG, dialogues)
    assert not decision.promote and decision.reason.startswith("profanity_check toxicity vs champion +0.5000")


def test_noise_within_the_interval_does_not_block_promotion():
    # Half the dialogues 0.2 more toxic, half 0.2 less: no significant change either way.
    candidate = rows_with(faithful, 0.3)
    for row in candidate[: N // 2]:
        row["ppo_toxicity_profanity_check"] = 0.1
    champion = rows_with(faithful, 0.2)
    rouge, toxicity, dialogues = paired_changes(candidate, "ppo", champion, "ppo", CFG, seed=0)
    assert toxicity.ci_low < 0 < toxicity.ci_high
    assert paired_decision(rouge, toxicity, CFG, dialogues).promote


def test_only_dialogues_both_were_scored_on_are_compared():
    candidate, champion = rows_with(faithful, 0.1), rows_with(faithful, 0.1)
    with pytest.raises(DataError, match="share 1 test dialogues"):
        paired_changes(candidate[:1], "ppo", champion, "ppo", CFG, seed=0)


def test_a_gate_classifier_without_per_dialogue_scores_names_the_key():
    cfg = RegisterConfig(toxicity_classifier="hatesonar")
    rows = rows_with(faithful, 0.1)
    with pytest.raises(ParamsError, match="register.toxicity_classifier"):
        paired_changes(rows, "ppo", rows, "ppo", cfg, seed=0)
