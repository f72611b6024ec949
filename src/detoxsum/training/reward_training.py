"""Train the preference reward model with trl's RewardTrainer (Bradley-Terry loss,
-log sigmoid(r_chosen - r_rejected)), and measure it before and after on held-out pairs.

The pairs are tokenized here (`reward_model.encode_pair`), not by the trainer: trl joins prompt and
summary into one string, which would cut the summary when a long dialogue fills `max_length`;
a pre-tokenized dataset (`chosen_ids`, `rejected_ids`) goes through the trainer as it is.
"""

from __future__ import annotations

import tempfile

from datasets import Dataset
from transformers import TrainerCallback

from detoxsum.config import TrainRewardConfig
from detoxsum.data.preferences import PreferencePair
from detoxsum.scoring.reward_model import encode_pair, pairwise_metrics, score_pairs


def tokenized_pairs(pairs: list[PreferencePair], tokenizer, max_length: int) -> Dataset:
    return Dataset.from_dict({
        "chosen_ids": [encode_pair(tokenizer, p.dialogue, p.chosen, max_length) for p in pairs],
        "rejected_ids": [encode_pair(tokenizer, p.dialogue, p.rejected, max_length) for p in pairs],
    })


def evaluate_pairs(model, tokenizer, pairs: list[PreferencePair], max_length: int) -> dict[str, float]:
    """Held-out pairwise accuracy and mean margin, overall and per family (`accuracy/<family>`),
    and the length check (`length_checks`)."""
    dialogues = [p.dialogue for p in pairs]
    chosen = score_pairs(model, tokenizer, dialogues, [p.chosen for p in pairs], max_length)
    rejected = score_pairs(model, tokenizer, dialogues, [p.rejected for p in pairs], max_length)
    result = {**pairwise_metrics(chosen, rejected), "pairs": len(pairs), **length_checks(pairs, chosen, rejected)}
    families = sorted({p.family for p in pairs})
    if len(families) > 1:
        for family in families:
            rows = [i for i, p in enumerate(pairs) if p.family == family]
            per_family = pairwise_metrics(chosen[rows], rejected[rows])
            result[f"accuracy/{family}"], result[f"margin/{family}"] = per_family["accuracy"], per_family["margin"]
    return result


def length_checks(pairs: list[PreferencePair], chosen, rejected) -> dict[str, float]:
    """Whether the reward could be length: `shorter_wins` is the accuracy of the rule "the summary
    with fewer words is chosen" (ties half right), and `accuracy/chosen_longer` the model's accuracy
    on the pairs that rule gets wrong. PPO finds a length preference at once and shortens every
    summary, so a model near shorter_wins but poor on chosen_longer has learned length."""
    words = [(len(p.chosen.split()), len(p.rejected.split())) for p in pairs]
    result = {"shorter_wins": round(sum(1.0 if c < r else 0.5 if c == r else 0.0 for c, r in words) / len(pairs), 4)}
    longer = [i for i, (c, r) in enumerate(words) if c > r]
    if longer:
        result["accuracy/chosen_longer"] = pairwise_metrics(chosen[longer], rejected[longer])["accuracy"]
    return result


class LiveCallback(TrainerCallback):
    """Each logged value (loss, eval_accuracy, eval_margin, ...) to DVCLive at its optimizer step."""

    def __init__(self, live):
        self.live = live

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.live.step = state.global_step
        for name, value in (logs or {}).items():
            if isinstance(value, (int, float)) and name not in ("epoch", "total_flos") and not name.endswith("_runtime") \
                    and not name.endswith("_per_second"):
                self.live.log_metric(name.replace("eval_", "eval/"), value)


def train_reward_model(model, tokenizer, train_pairs: list[PreferencePair], eval_pairs: list[PreferencePair],
                       cfg: TrainRewardConfig, seed: int, callbacks: list[TrainerCallback] = ()) -> list[dict]:
    """Fit `model` (a one-output sequence classifier) in place; returns the trainer's log history."""
    from trl import RewardConfig, RewardTrainer

    with tempfile.TemporaryDirectory(prefix="detoxsum-reward-") as scratch:  # nothing is saved there
        args = RewardConfig(
            output_dir=scratch, learning_rate=cfg.lr, num_train_epochs=cfg.epochs,
            per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size * 2,
            logging_steps=cfg.logging_steps, eval_strategy="steps", eval_steps=cfg.eval_steps, save_strategy="no",
            report_to="none", seed=seed, data_seed=seed, max_length=cfg.max_length,
            # fp32 and no recomputation: a 22M-parameter encoder is fast enough without either
            bf16=False, fp16=False, gradient_checkpointing=False, disable_tqdm=True, dataloader_num_workers=0,
        )
        trainer = RewardTrainer(model=model, args=args, processing_class=tokenizer,
                                train_dataset=tokenized_pairs(train_pairs, tokenizer, cfg.max_length),
                                eval_dataset=tokenized_pairs(eval_pairs, tokenizer, cfg.max_length),
                                callbacks=list(callbacks))
        trainer.train()
        return trainer.state.log_history
