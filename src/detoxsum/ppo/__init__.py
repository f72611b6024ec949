"""PPO with a per-token KL penalty (RLHF) that makes the summarizer less toxic, for either family.

The algorithm is Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences"
(arXiv:1909.08593): a sampled summary's reward is a reward-model score of its text, minus
beta * (log pi - log pi_ref) at every token, with beta fixed or steered towards a target KL. The
engineering follows Huang, Liu & von Werra, "The N Implementation Details of RLHF with PPO" (ICLR
2024 Blogposts): log-probs recomputed in a forward pass, dropout off, GAE over response tokens,
advantages whitened over the batch, clipped policy and value losses, several epochs of shuffled
minibatches, a zero-initialised value head, Adam with eps 1e-5. Options beyond it, each behind a
`train_ppo` key: per-token credit by potential-based shaping over prefixes (`reward_shaping:
prefix`), ReMax's greedy baseline (`reward_baseline: greedy`, Li et al. 2023) and RLOO's
leave-one-out baseline (`reward_baseline: leave_one_out`, Ahmadian et al. 2024). Why the defaults
are what they are, with the runs behind them: docs/experiments.md.

Why hand-written: trl >= 1.13 removed PPOTrainer and AutoModelForSeq2SeqLMWithValueHead (PR #7020),
and its remaining online trainers (GRPO, RLOO) slice completions out of prompt+completion
sequences, which does not fit encoder-decoder models such as FLAN-T5. No code is taken from trl or
elsewhere; architecture differences stay behind `Family.forward_response` (models/family.py).

Modules: `functional` (pure math), `model` (build / save / load / forward), `rollout` (prompts,
sampling, texts, potentials, scoring passes), `trainer` (the loop, as numbered steps).

Run it through the stage: `python -m detoxsum.stages.train_ppo`. In code:

    ppo = build_ppo_model(model_dir, [sft_adapter_dir], cfg, precision="bf16")
    history = train_ppo(ppo, render_prompts(dialogues, ppo, base), reward_fn, cfg, seed=42)
    save_ppo_model(ppo, out_dir)   # loads back with load_with_adapters(model_dir, [sft_dir, out_dir])
"""

from detoxsum.ppo.model import PPOModel, ValueHead, build_ppo_model, forward_policy, load_value_head, save_ppo_model
from detoxsum.ppo.rollout import DialogueReward, RewardFn, hardest_dialogues, render_prompts
from detoxsum.ppo.trainer import ADAM_EPS, ppo_step, summarize_history, train_ppo
from detoxsum.ppo.types import Rollout

__all__ = [
    "ADAM_EPS", "DialogueReward", "PPOModel", "RewardFn", "Rollout", "ValueHead", "build_ppo_model", "forward_policy",
    "hardest_dialogues", "load_value_head", "ppo_step", "render_prompts", "save_ppo_model",
    "summarize_history", "train_ppo",
]
