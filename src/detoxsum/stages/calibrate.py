"""calibrate: how well each toxicity classifier of `evaluate` tells an insult from clean text.

Run: `python -m detoxsum.stages.calibrate`. Reads `evaluate.toxicity_classifiers`,
`evaluate.bootstrap_resamples`, `base.seed` and `data/calibration/insults.jsonl` (dialogue lines of
data/sample labelled insult or clean by the rule in scripts/make_calibration.py); writes
`metrics/calibration.json`: per classifier its ROC AUC with a 95 % bootstrap interval, its floor
(mean score on the clean lines), its mean on the insults, and `near_chance` where the interval
reaches below 0.6. Also PPO's reward (`train_ppo.reward`), scored as minus its reward, under
`reward`: its AUC says whether PPO is paid to remove insults; the floor and insult mean are then in
the reward's units (for `output: prob`, probabilities). A trained reward scores a (dialogue,
summary) pair, not a line alone, and is left out.
"""

from detoxsum.config import load_stage_config
from detoxsum.outputs import run_stage, write_json_atomic
from detoxsum.scoring.calibration import calibration_figures, read_calibration_set
from detoxsum.scoring.reward import build_reward_model, build_scorer
from detoxsum.stages.paths import CALIBRATION_FILE, metrics_file, timing_file


def main() -> None:
    base = load_stage_config("base")
    cfg = load_stage_config("evaluate")
    reward_spec = load_stage_config("train_ppo").reward
    lines = read_calibration_set(CALIBRATION_FILE)  # a bad row stops here, before any classifier loads
    scorers = [build_scorer(spec) for spec in cfg.toxicity_classifiers]
    reward = None if reward_spec.kind == "trained" else build_reward_model(reward_spec)

    def figures_of(scores: list[float]) -> dict:
        return calibration_figures(scores, lines.is_insult, cfg.bootstrap_resamples, base.seed)

    figures = {spec.name: figures_of(scorer.score(lines.texts)) for spec, scorer in zip(cfg.toxicity_classifiers, scorers)}
    insults = sum(lines.is_insult)
    report = {"insult_lines": insults, "clean_lines": len(lines.texts) - insults, "classifiers": figures}
    if reward is not None:
        report["reward"] = {"kind": reward_spec.kind, "label": reward_spec.label, "output": reward_spec.output,
                            **figures_of((-reward.rewards(lines.texts)).tolist())}
    write_json_atomic(metrics_file("calibration"), report)
    rows = {**figures, **({"PPO reward": report["reward"]} if reward is not None else {})}
    for name, row in rows.items():
        print(f"calibrate: {name}: AUC {row['auc']:.3f} [{row['auc_ci_low']:.3f}, {row['auc_ci_high']:.3f}], "
              f"floor {row['floor']:.3f}, insults {row['insult_mean']:.3f}{'  (near chance)' if row['near_chance'] else ''}")


if __name__ == "__main__":
    run_stage(main, timing_file("calibrate"))
