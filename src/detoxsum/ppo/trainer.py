"""The PPO loop: collect a rollout, turn scores into per-token rewards and advantages, update.

A step reads as the numbered comments of `collect_rollout` (1-6) and `ppo_step` (7-8); the
arithmetic lives in `functional.py`, sampling and scoring passes in `rollout.py`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from detoxsum.checkpoints import load_state, save_state
from detoxsum.config import TrainPPOConfig
from detoxsum.errors import DataError, TrainingDiverged
from detoxsum.models.tokens import decode_responses, stop_token_ids
from detoxsum.ppo.functional import (
    adaptive_beta,
    approx_kl,
    gae_advantages,
    kl_penalized_rewards,
    leave_one_out_baselines,
    logprobs_from_logits,
    masked_mean,
    masked_scale,
    masked_whiten,
    policy_loss,
    prefix_shaped_scores,
    scores_at_last_token,
    value_loss,
)
from detoxsum.ppo.model import PPOModel, forward_policy
from detoxsum.ppo.rollout import (
    RewardFn,
    chunked_logprobs,
    ends_at_stop,
    greedy_baselines,
    prefix_potentials,
    prompt_batches,
    sample_responses,
    score_texts,
)
from detoxsum.ppo.types import Rollout

# lm-human-preferences ran TensorFlow's Adam with eps 1e-5; Huang et al. found PyTorch's Adam with
# its defaults makes the first updates more aggressive.
ADAM_EPS = 1e-5


def clipped(scores: torch.Tensor, cfg: TrainPPOConfig) -> torch.Tensor:
    return scores if cfg.reward_clip is None else scores.clamp(-cfg.reward_clip, cfg.reward_clip)


def next_beta(beta: float, current_kl: float, cfg: TrainPPOConfig) -> float:
    """The KL coefficient for the next step: adaptive (Ziegler et al.) or fixed."""
    if not cfg.adaptive_kl:
        return beta
    return adaptive_beta(beta, current_kl, cfg.target_kl, cfg.kl_horizon, cfg.batch_size)


@torch.no_grad()
def collect_rollout(ppo: PPOModel, prompts: list[str], reward_fn: RewardFn, cfg: TrainPPOConfig,
                    beta: float, baselines: torch.Tensor | None = None) -> tuple[Rollout, dict[str, float]]:
    """Steps 1-6 of a PPO iteration: experience with advantages, ready for the update.

    `baselines` (one per prompt, see `greedy_baselines`) are subtracted from the reward-model scores;
    with `reward_baseline: leave_one_out` the baselines come from the batch itself.
    """
    started = time.perf_counter()
    # 1. rollout: sample a summary per prompt and score it (its text alone, or with its dialogue)
    rollout = sample_responses(ppo, prompts, cfg.max_new_tokens)
    mask = rollout.response_mask
    sampled = time.perf_counter()
    texts = decode_responses(ppo.tokenizer, rollout.response_ids, mask)
    raw_scores = score_texts(reward_fn, texts, prompts).float().to(ppo.device)
    assert raw_scores.shape == (len(prompts),), f"reward_fn must return one reward per text, got {raw_scores.shape}"
    scored = time.perf_counter()

    # 2. old log-probs and values, from the same forward pass the update uses (generate's scores come
    #    from a different, cached computation), so that the ratios start at 1; minibatch-sized chunks,
    #    so the float32 [rows, T, vocab] logits never exist for the whole batch at once
    rollout.logprobs, rollout.values, rollout.frozen, entropies = chunked_logprobs(ppo, rollout, cfg.minibatch_size)

    # 3. reference log-probs: the same weights with the PPO adapter switched off
    with ppo.policy.disable_adapter():
        rollout.ref_logprobs, *_ = chunked_logprobs(ppo, rollout, cfg.minibatch_size)
    forwarded = time.perf_counter()

    # 4. scores: clipped as the reward model gave them, a summary cut before its end of turn scored
    #    `unfinished_score` (so rambling to the cap never pays), then the baseline subtracted; clipping
    #    after the baseline would bias it (RLOO's leave-one-out mean is no longer of the scores used)
    finished = ends_at_stop(rollout.response_ids, mask, stop_token_ids(ppo.tokenizer))
    scores = clipped(raw_scores, cfg)
    if cfg.unfinished_score is not None:
        scores = torch.where(finished, scores, torch.full_like(scores, cfg.unfinished_score))
    if cfg.reward_baseline == "leave_one_out":
        baselines = leave_one_out_baselines(scores, cfg.samples_per_prompt)
    rollout.scores = scores if baselines is None else scores - baselines.to(scores)

    # 5. per-token rewards: the score at the last token, or spread over the tokens by
    #    `reward_shaping: prefix`; -beta * KL per token; optionally rescaled to unit variance
    if cfg.reward_shaping == "prefix":
        potentials = clipped(prefix_potentials(ppo.tokenizer, rollout.response_ids, mask, reward_fn, prompts), cfg)
        token_scores = prefix_shaped_scores(potentials, rollout.scores, mask, cfg.gamma)
    else:
        token_scores = scores_at_last_token(rollout.scores, mask)
    shaped = time.perf_counter()
    rollout.rewards = kl_penalized_rewards(token_scores, rollout.logprobs, rollout.ref_logprobs, mask, beta)
    if cfg.whiten_rewards:
        rollout.rewards = masked_scale(rollout.rewards, mask)

    # 6. GAE advantages and value targets; advantages whitened over the whole batch (not per minibatch)
    rollout.advantages, rollout.returns = gae_advantages(rollout.rewards, rollout.values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        rollout.advantages = masked_whiten(rollout.advantages, mask)

    stats = rollout_stats(rollout, raw_scores, finished, masked_mean(entropies, mask), beta)
    stats.update(time_generate_s=sampled - started,
                 time_reward_s=(scored - sampled) + (shaped - forwarded),  # step 1's scores, step 5's prefixes
                 time_forward_s=forwarded - scored)  # steps 2-3
    return rollout, stats


def rollout_stats(rollout: Rollout, raw_scores: torch.Tensor, finished: torch.Tensor, entropy: torch.Tensor,
                  beta: float) -> dict[str, float]:
    mask = rollout.response_mask
    sequence_kl = ((rollout.logprobs - rollout.ref_logprobs) * mask).sum(1)
    return {
        "reward_mean": raw_scores.mean().item(),
        "reward_std": raw_scores.std().item() if len(raw_scores) > 1 else 0.0,
        "reward_gain_mean": rollout.scores.mean().item(),  # after clipping, unfinished score and baseline
        "kl": sequence_kl.mean().item(),
        "entropy": entropy.item(),
        "beta": beta,
        "response_length": mask.sum(1).mean().item(),
        "unfinished_fraction": 1 - finished.float().mean().item(),
    }


def minibatch_update(ppo: PPOModel, optimizer: torch.optim.Optimizer, batch: Rollout,
                     cfg: TrainPPOConfig, scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """One gradient step on the clipped policy loss + vf_coef * clipped value loss (loss-scaled under
    fp16), unless the updates before it already moved the policy too far.

    `approx_kl` is how far the policy has moved from the one that sampled the batch, measured on
    this minibatch in the forward pass the step uses (0 on a step's first minibatch, which that pass
    reproduces). Above `early_stop_approx_kl` the step is not taken and the result holds `approx_kl`
    alone: the clipped objective no longer holds the policy near the sampler, so the epochs stop (as
    Spinning Up's and Stable-Baselines3's PPO stop). Measuring it after the step instead took a third
    forward pass per minibatch, a quarter of the update's time."""
    logits, values, _ = forward_policy(ppo, batch)
    logprobs = logprobs_from_logits(logits, batch.response_ids)
    mask = batch.response_mask
    moved = approx_kl(logprobs.detach(), batch.logprobs, mask).item()
    if cfg.early_stop_approx_kl is not None and moved > cfg.early_stop_approx_kl:
        return {"approx_kl": moved}
    pg_loss, clip_fraction = policy_loss(logprobs, batch.logprobs, batch.advantages, mask, cfg.clip_range)
    vf_loss, vf_clip_fraction = value_loss(values, batch.values, batch.returns, mask, cfg.clip_range_value)
    scaler = scaler or torch.amp.GradScaler(enabled=False)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(pg_loss + cfg.vf_coef * vf_loss).backward()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(ppo.trainable_parameters(), cfg.max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    return {
        "policy_loss": pg_loss.item(),
        "value_loss": vf_loss.item(),
        "clip_fraction": clip_fraction.item(),
        "value_clip_fraction": vf_clip_fraction.item(),
        "approx_kl": moved,
        # under fp16 an inf norm is loss scaling at work (the scaler skips that step), not divergence
        "grad_norm": grad_norm.item() if not scaler.is_enabled() else 0.0,
    }


def stepped(update: dict[str, float]) -> bool:
    """Whether `minibatch_update` took its step (an early stop returns `approx_kl` alone)."""
    return "policy_loss" in update


def ppo_epochs(ppo: PPOModel, optimizer: torch.optim.Optimizer, rollout: Rollout, cfg: TrainPPOConfig,
               generator: torch.Generator, scaler: torch.amp.GradScaler | None = None) -> list[dict[str, float]]:
    """Several epochs of shuffled minibatch updates, until one finds the policy moved past
    `early_stop_approx_kl` (`minibatch_update`); that last one took no step."""
    updates: list[dict[str, float]] = []
    for _epoch in range(cfg.ppo_epochs):
        for index in torch.randperm(cfg.batch_size, generator=generator).split(cfg.minibatch_size):
            updates.append(minibatch_update(ppo, optimizer, rollout.select(index.to(ppo.device)), cfg, scaler))
            if not stepped(updates[-1]):
                return updates
    return updates


def ppo_step(ppo: PPOModel, optimizer: torch.optim.Optimizer, beta: float, prompts: list[str], reward_fn: RewardFn,
             cfg: TrainPPOConfig, generator: torch.Generator, baselines: dict[str, float] | None = None,
             scaler: torch.amp.GradScaler | None = None) -> tuple[dict[str, float], float]:
    """One PPO iteration on a batch of prompts; returns its statistics and the next step's beta."""
    batch_baselines = None if baselines is None else torch.tensor([baselines[p] for p in prompts])
    rollout, stats = collect_rollout(ppo, prompts, reward_fn, cfg, beta, batch_baselines)  # steps 1-6

    # 7. PPO epochs over shuffled minibatches
    started = time.perf_counter()
    updates = ppo_epochs(ppo, optimizer, rollout, cfg, generator, scaler)
    steps = [update for update in updates if stepped(update)]
    stats["grad_norm_max"] = max(update.pop("grad_norm") for update in steps)  # checked, not logged
    stats.update({key: sum(update[key] for update in steps) / len(steps) for key in steps[0]})
    stats["approx_kl_max"] = max(update["approx_kl"] for update in updates)  # with an early stop's
    stats["minibatch_updates"] = len(steps)
    stats["time_update_s"] = time.perf_counter() - started

    # 8. adapt beta towards the target KL (unchanged when fixed)
    return stats, next_beta(beta, stats["kl"], cfg)


def train_ppo(ppo: PPOModel, prompts: list[str], reward_fn: RewardFn, cfg: TrainPPOConfig, seed: int,
              on_step: Callable[[dict[str, float]], None] | None = None,
              checkpoints: Path | None = None) -> list[dict[str, float]]:
    """Run `cfg.steps` PPO iterations on cycled batches of `prompts`; returns each step's statistics.

    With a `checkpoints` folder the run saves its whole state there every `cfg.checkpoint_steps`
    steps, and continues from the state it finds there, ending where an uninterrupted run ends;
    `on_step` then first sees the steps before the checkpoint again, so curves are complete.
    """
    if not prompts:
        raise DataError("train_ppo: no training prompts")
    assert cfg.num_minibatches * cfg.minibatch_size == cfg.batch_size
    on_step = on_step or (lambda stats: None)
    torch.manual_seed(seed)  # sampling in generate
    generator = torch.Generator().manual_seed(seed)  # minibatch shuffling
    optimizer = torch.optim.AdamW(ppo.trainable_parameters(), lr=cfg.lr, eps=ADAM_EPS, weight_decay=0.0)
    # fp16's narrow range underflows small gradients; bf16 and fp32 need no loss scaling
    scaler = torch.amp.GradScaler(ppo.device.type, enabled=ppo.precision == "fp16")
    saved = load_state(checkpoints) if checkpoints is not None else None
    if saved is None:
        loop = {"baselines": initial_baselines(ppo, prompts, reward_fn, cfg), "beta": cfg.kl_coef, "history": []}
    else:
        loop = restore(saved, ppo, optimizer, scaler, generator)
        print(f"train_ppo: resuming from step {len(loop['history'])} ({checkpoints})")
        for stats in loop["history"]:
            on_step(stats)
    batches = prompt_batches(prompts, cfg.batch_size, seed, cfg.samples_per_prompt)
    for _done in loop["history"]:
        next(batches)
    progress = tqdm(range(len(loop["history"]), cfg.steps), desc="ppo", unit="step",
                    initial=len(loop["history"]), total=cfg.steps)
    for step in progress:
        stats, loop["beta"] = ppo_step(ppo, optimizer, loop["beta"], next(batches), reward_fn, cfg, generator,
                                       loop["baselines"], scaler)
        stop_if_diverged(stats, step + 1, cfg.lr)
        del stats["grad_norm_max"]
        loop["history"].append(stats)
        progress.set_postfix(reward=f"{stats['reward_mean']:.3f}", kl=f"{stats['kl']:.2f}")
        on_step(stats)
        if checkpoints is not None and (step + 1) % cfg.checkpoint_steps == 0 and step + 1 < cfg.steps:
            save_state(checkpoints, snapshot(ppo, optimizer, scaler, generator, loop))
    return loop["history"]


def initial_baselines(ppo: PPOModel, prompts: list[str], reward_fn: RewardFn,
                      cfg: TrainPPOConfig) -> dict[str, float] | None:
    """Per-prompt reward baselines fixed for the run: the SFT model's greedy summary's (clipped)
    score with `reward_baseline: greedy`, else None."""
    if cfg.reward_baseline != "greedy":
        return None
    greedy = greedy_baselines(ppo, prompts, reward_fn, cfg.max_new_tokens, cfg.batch_size)
    return {prompt: clipped(torch.tensor(score), cfg).item() for prompt, score in greedy.items()}


def snapshot(ppo: PPOModel, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
             generator: torch.Generator, loop: dict[str, Any]) -> dict[str, Any]:
    """Everything the next step depends on: the trained weights (PPO adapter and value head), the
    optimizer's moments, the loss scaler, every random number generator, and the loop's state."""
    return {
        "weights": [parameter.detach().cpu() for parameter in ppo.trainable_parameters()],
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state(),
        **loop,
    }


def restore(saved: dict[str, Any], ppo: PPOModel, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
            generator: torch.Generator) -> dict[str, Any]:
    """Put a `snapshot` back in place; returns the loop's state (baselines, beta, history)."""
    with torch.no_grad():
        for parameter, weight in zip(ppo.trainable_parameters(), saved["weights"], strict=True):
            parameter.copy_(weight)
    optimizer.load_state_dict(saved["optimizer"])
    if saved["scaler"] is not None:
        scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["torch_rng"])
    if saved["cuda_rng"]:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    generator.set_state(saved["generator"])
    return {key: saved[key] for key in ("baselines", "beta", "history")}


# The statistics of a step that must be finite; one that is not means the policy has diverged.
FINITE_STATS = ("reward_mean", "policy_loss", "value_loss", "kl", "approx_kl", "grad_norm_max")


def stop_if_diverged(stats: dict[str, float], step: int, lr: float) -> None:
    """Raise `TrainingDiverged` naming the step and `train_ppo.lr` when a loss, the reward, the KL or
    the gradient norm of a step is NaN or infinite (the adapter is then never saved)."""
    broken = [f"{key} {stats[key]}" for key in FINITE_STATS if key in stats and not math.isfinite(stats[key])]
    if broken:
        raise TrainingDiverged(f"train_ppo diverged at step {step}: {', '.join(broken)}; lower train_ppo.lr "
                               f"(now {lr:g}) or train_ppo.max_grad_norm; no adapter was written")


def summarize_history(history: list[dict[str, float]], runtime_s: float) -> dict[str, float]:
    """The few numbers worth a metrics file: where reward and KL started and ended."""
    first, last = history[0], history[-1]
    return {
        "reward_mean_first": round(first["reward_mean"], 4),
        "reward_mean_last": round(last["reward_mean"], 4),
        "kl_last": round(last["kl"], 4),
        "beta_last": round(last["beta"], 5),
        "steps": len(history),
        "runtime_s": round(runtime_s, 1),
        "seconds_per_step": round(runtime_s / len(history), 2),
    }
