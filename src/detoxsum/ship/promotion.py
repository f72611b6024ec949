"""The promotion gate: may a new model version replace the `champion`? Pure functions, no MLflow.

Two versions are compared only when they were evaluated on the same test set (`test_set_fingerprint`,
written by evaluate): a ROUGE point on 102 sample dialogues says nothing about one on DialogSum.

With both versions' per-dialogue predictions (`results/predictions.jsonl`, logged with each run) the
gate is paired: over the same dialogues, a bootstrap gives the 95 % interval of candidate minus
champion for ROUGE-L and for the gate classifier's toxicity, and the candidate is refused only when
it is *significantly* worse: its ROUGE change interval lies wholly below 0, or its toxicity change
interval wholly above 0. Without them (versions logged before predictions were) it falls back to
the fixed tolerances `register.rouge_tolerance` / `register.toxicity_tolerance`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from detoxsum.config import RegisterConfig
from detoxsum.errors import DataError, ParamsError
from detoxsum.scoring.metrics import bootstrap_indices, change_interval, rouge_per_dialogue

BOOTSTRAP_RESAMPLES = 1000


@dataclass(frozen=True)
class GateScores:
    """The two numbers the gate compares: a ROUGE score (0-100) and a mean toxicity (0-1)."""

    rouge: float
    toxicity: float


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


@dataclass(frozen=True)
class PairedChange:
    """Candidate minus champion on the same dialogues, with its 95 % paired bootstrap interval."""

    change: float
    ci_low: float
    ci_high: float

    def text(self, digits: int) -> str:
        return f"{self.change:+.{digits}f} (95 % CI {self.ci_low:+.{digits}f} to {self.ci_high:+.{digits}f})"


def toxicity_key(cfg: RegisterConfig) -> str:
    return f"toxicity_{cfg.toxicity_classifier}_mean"


def gate_scores(evaluate_metrics: dict, cfg: RegisterConfig) -> GateScores:
    """Read the gated numbers of model `cfg.model` out of metrics/evaluate.json's content."""
    block = evaluate_metrics.get(cfg.model)
    if not isinstance(block, dict):
        raise DataError(f"metrics/evaluate.json: no block '{cfg.model}' (register.model); run the evaluate stage")
    if toxicity_key(cfg) not in block:
        found = sorted(key[len("toxicity_"):-len("_mean")] for key in block
                       if key.startswith("toxicity_") and key.endswith("_mean"))
        raise ParamsError(f"params key 'register.toxicity_classifier' is {cfg.toxicity_classifier!r}, but "
                          f"metrics/evaluate.json has toxicity only for {found} (evaluate.toxicity_classifiers)")
    return GateScores(rouge=float(block[cfg.rouge_metric]), toxicity=float(block[toxicity_key(cfg)]))


def test_set_fingerprint(evaluate_metrics: dict) -> str | None:
    """The test set's fingerprint recorded by evaluate (None in metrics written before it was)."""
    return evaluate_metrics.get("test_set_fingerprint")


test_set_fingerprint.__test__ = False  # a helper, not a pytest test


def promotion_decision(candidate: GateScores, champion: GateScores | None, cfg: RegisterConfig,
                       champion_name: str = "champion") -> Decision:
    """The fixed-tolerance gate: promote when ROUGE >= champion's - rouge_tolerance and toxicity <=
    champion's + toxicity_tolerance. The reason spells out each comparison with its numbers, e.g.
    `rougeL 27.10 < 28.81 (champion v3 29.31 - tolerance 0.5)`.
    """
    if champion is None:
        return Decision(True, "no champion yet")
    rouge_floor = champion.rouge - cfg.rouge_tolerance
    toxicity_ceiling = champion.toxicity + cfg.toxicity_tolerance
    rouge_ok, toxicity_ok = candidate.rouge >= rouge_floor, candidate.toxicity <= toxicity_ceiling
    rouge_text = (f"{cfg.rouge_metric} {candidate.rouge:.2f} {'>=' if rouge_ok else '<'} {rouge_floor:.2f} "
                  f"({champion_name} {champion.rouge:.2f} - tolerance {cfg.rouge_tolerance:g})")
    toxicity_text = (f"{toxicity_key(cfg)} {candidate.toxicity:.4f} {'<=' if toxicity_ok else '>'} "
                     f"{toxicity_ceiling:.4f} ({champion_name} {champion.toxicity:.4f} + tolerance "
                     f"{cfg.toxicity_tolerance:g})")
    return combine([(rouge_text, rouge_ok), (toxicity_text, toxicity_ok)])


def paired_decision(rouge: PairedChange, toxicity: PairedChange, cfg: RegisterConfig, dialogues: int,
                    champion_name: str = "champion") -> Decision:
    """The paired gate: refuse only a candidate significantly worse than the champion (95 %)."""
    rouge_ok, toxicity_ok = rouge.ci_high >= 0, toxicity.ci_low <= 0
    rouge_text = (f"{cfg.rouge_metric} vs {champion_name} {rouge.text(2)} on {dialogues} test dialogues: "
                  f"{'not significantly lower' if rouge_ok else 'significantly lower'}")
    toxicity_text = (f"{cfg.toxicity_classifier} toxicity vs {champion_name} {toxicity.text(4)}: "
                     f"{'not significantly higher' if toxicity_ok else 'significantly higher'}")
    return combine([(rouge_text, rouge_ok), (toxicity_text, toxicity_ok)])


def combine(checks: Sequence[tuple[str, bool]]) -> Decision:
    """Promote when every check passes (reason: all of them), else name only the failed ones."""
    if all(ok for _, ok in checks):
        return Decision(True, " and ".join(text for text, _ in checks))
    return Decision(False, "; ".join(text for text, ok in checks if not ok))


def paired_changes(candidate_rows: list[dict], candidate_model: str, champion_rows: list[dict], champion_model: str,
                   cfg: RegisterConfig, seed: int) -> tuple[PairedChange, PairedChange, int]:
    """`cfg.rouge_metric` (per dialogue against its best reference) and the gate classifier's greedy
    toxicity, candidate minus champion, over the dialogues both were scored on (rows of
    `results/predictions.jsonl`, matched by id), with paired bootstrap intervals."""
    champion_by_id = {row["id"]: row for row in champion_rows}
    pairs = [(row, champion_by_id[row["id"]]) for row in candidate_rows if row["id"] in champion_by_id]
    if len(pairs) < 2:
        raise DataError(f"the candidate's and the champion's predictions share {len(pairs)} test dialogues; "
                        "cannot compare them")
    references = [candidate["references"] for candidate, _ in pairs]
    rouge_type = cfg.rouge_metric
    rouge_after = rouge_per_dialogue([c[candidate_model] for c, _ in pairs], references)["best"][rouge_type]
    rouge_before = rouge_per_dialogue([c[champion_model] for _, c in pairs], references)["best"][rouge_type]
    column = f"_toxicity_{cfg.toxicity_classifier}"
    try:
        toxicity_after = [float(c[candidate_model + column]) for c, _ in pairs]
        toxicity_before = [float(c[champion_model + column]) for _, c in pairs]
    except KeyError as exc:
        raise ParamsError(f"params key 'register.toxicity_classifier': no per-dialogue column {exc} in "
                          "results/predictions.jsonl") from None
    indices = bootstrap_indices(len(pairs), BOOTSTRAP_RESAMPLES, seed)
    changes = [change_interval(before, after, indices) for before, after in
               ((rouge_before, rouge_after), (toxicity_before, toxicity_after))]
    rouge, toxicity = (PairedChange(c["change"], c["change_ci_low"], c["change_ci_high"]) for c in changes)
    return rouge, toxicity, len(pairs)
