"""calibrate: how well each toxicity classifier of `evaluate` tells an insult from clean text.

Run: `python -m detoxsum.stages.calibrate`. Reads `evaluate.toxicity_classifiers`,
`evaluate.bootstrap_resamples`, `base.seed` and `data/calibration/insults.jsonl` (dialogue lines of
data/sample labelled insult or clean by the rule in scripts/make_calibration.py); writes
`metrics/calibration.json`: per classifier its ROC AUC with a 95 % bootstrap interval, its floor
(mean score on the clean lines), its mean on the insults, and `near_chance` where the interval
reaches below 0.6. The default PPO reward is profanity-check, the `profanity_check` judge here.
"""

from detoxsum.config import load_stage_config
from detoxsum.outputs import run_stage, write_json_atomic
from detoxsum.scoring.calibration import calibration_figures, read_calibration_set
from detoxsum.scoring.reward import build_scorer
from detoxsum.stages.paths import CALIBRATION_FILE, metrics_file, timing_file


def main() -> None:
    base = load_stage_config("base")
    cfg = load_stage_config("evaluate")
    lines = read_calibration_set(CALIBRATION_FILE)  # a bad row stops here, before any classifier loads
    scorers = [build_scorer(spec) for spec in cfg.toxicity_classifiers]
    figures = {spec.name: calibration_figures(scorer.score(lines.texts), lines.is_insult, cfg.bootstrap_resamples,
                                              base.seed)
               for spec, scorer in zip(cfg.toxicity_classifiers, scorers)}
    insults = sum(lines.is_insult)
    write_json_atomic(metrics_file("calibration"), {"insult_lines": insults, "clean_lines": len(lines.texts) - insults,
                                                    "classifiers": figures})
    for name, row in figures.items():
        print(f"calibrate: {name}: AUC {row['auc']:.3f} [{row['auc_ci_low']:.3f}, {row['auc_ci_high']:.3f}], "
              f"floor {row['floor']:.3f}, insults {row['insult_mean']:.3f}{'  (near chance)' if row['near_chance'] else ''}")


if __name__ == "__main__":
    run_stage(main, timing_file("calibrate"))
