"""PPO with a per-token KL penalty (RLHF) that makes the summarizer less toxic, for either family.

The algorithm is Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences"
(arXiv:1909.08593): the reward of a sampled summary is a reward-model score of its text, placed at
its last token, minus beta * (log pi - log pi_ref) at every token, with beta fixed or steered
towards a target KL by their adaptive controller. The engineering follows Huang, Liu & von Werra,
"The N Implementation Details of RLHF with PPO" (Hugging Face blog 2023, ICLR 2024 Blogposts):
log-probs recomputed in a forward pass rather than taken from generate; dropout off so those
log-probs are deterministic; GAE over response tokens; advantages whitened over the batch;
clipped policy and value losses; several epochs of shuffled minibatches; a zero-initialised value
head; Adam with eps 1e-5. Departures from it, each behind a `train_ppo` key: `reward_shaping:
prefix` gives every token the change in the reward model's score of the summary text up to it
(potential-based shaping, Ng, Harada & Russell 1999: each summary's total, and so the optimum, is
unchanged); with `lam: 0` each token's advantage is then its own reward plus the value head's
one-step correction, so the word that made a summary rude takes the blame instead of all forty
tokens sharing one end-of-summary score. That is the offline default: on the 2-core budget of 128
samples a run, a sequence-level score moved the policy by noise (KL 3-7 nats, ROUGE-L -3 on average)
more than by the reward. `reward_baseline: greedy` takes each score relative to the reward of the
SFT model's greedy summary of the same dialogue (ReMax's baseline, Li et al. 2023);
`reward_baseline: leave_one_out` with `samples_per_prompt: k` scores each of k samples of a
dialogue against the mean of its siblings (RLOO, Ahmadian et al. 2024).

Why hand-written: trl >= 1.13 removed PPOTrainer and AutoModelForSeq2SeqLMWithValueHead (PR #7020),
and its remaining online trainers (GRPO, RLOO) slice completions out of prompt+completion
sequences, which does not fit encoder-decoder models such as FLAN-T5. No code is taken from trl or
elsewhere; architecture differences stay behind `Family.forward_response` (modeling.py).

One model plays three parts: the SFT model with its LoRA adapter merged is the reference policy,
a fresh LoRA adapter on top is the policy, and `with policy.disable_adapter():` switches back to the
reference. The fresh adapter's B matrices are zero, so at the first step pi == pi_ref exactly.

Where the time goes (SmolLM2-135M, 2 CPU cores): a step is one sampling pass, two forward passes
(policy, reference) and `ppo_epochs` forward+backward passes over the batch; under bf16/fp16 autocast
the frozen weights are stored in that dtype so autocast does not re-cast them on every generated
token, while the output layer that turns hidden states into the log-probs of PPO's ratios runs in
float32 (bf16 logits near 40 are rounded to steps of 0.25). With every
layer adapted the update epochs are two thirds of a step. `train_ppo.top_layers` keeps the adapter
in the last layers: the backward pass stops there, and since nothing below changes during a step,
the first forward pass keeps the output of the frozen layers (T5: the encoder) and the reference
pass and all update epochs run only the layers above it (`benchmarks/ppo_step.py` prints the split).

Run it through the stage: `python -m detoxsum.stages.train_ppo`. In code:

    ppo = build_ppo_model(model_dir, [sft_adapter_dir], cfg, precision="bf16")
    history = train_ppo(ppo, render_prompts(dialogues, ppo, base), reward_fn, cfg, seed=42)
    save_ppo_model(ppo, out_dir)   # loads back with load_with_adapters(model_dir, [sft_dir, out_dir])
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from detoxsum.config import BaseConfig, TrainPPOConfig
from detoxsum.errors import DataError
from detoxsum.lora import attach_lora, lora_targets, lowest_layer, top_layer_targets
from detoxsum.modeling import (
    Family,
    fit_dialogue,
    float32_output_layer,
    generate_summaries,
    load_model,
    load_with_adapters,
    pad_prompts,
    stop_token_ids,
)
from detoxsum.precision import DTYPES, autocast

VALUE_HEAD_FILE = "value_head.safetensors"
# lm-human-preferences ran TensorFlow's Adam with eps 1e-5; Huang et al. found PyTorch's Adam with
# its defaults makes the first updates more aggressive.
ADAM_EPS = 1e-5

# texts -> one reward per text, shape [B]; a RewardModel's `rewards`, or any function in tests.
RewardFn = Callable[[list[str]], torch.Tensor]


# --- pure helpers: masked statistics, GAE, log-probs, losses, KL control -----------------------------


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is 1 (over all elements, or along `dim`)."""
    if dim is None:
        return (values * mask).sum() / mask.sum()
    return (values * mask).sum(dim) / mask.sum(dim)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `values` where `mask` is 1; Bessel-corrected when `unbiased`."""
    centred = values - masked_mean(values, mask)
    variance = masked_mean(centred**2, mask)
    if unbiased:
        count = mask.sum()
        variance = variance * count / (count - 1).clamp(min=1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Scale to unit variance over the masked elements, and to zero mean when `shift_mean`."""
    mean, variance = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    return whitened if shift_mean else whitened + mean


def response_mask_until_stop(response_ids: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """1.0 up to and including each row's first stop token, 0.0 after it (float mask [B, T])."""
    is_stop = torch.isin(response_ids, torch.tensor(stop_ids, device=response_ids.device)).long()
    stops_before = is_stop.cumsum(1) - is_stop
    return (stops_before == 0).float()


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns (Schulman et al. 2016) per response token.

    Rewards and values past a response's end are zeroed first, so the value after the last token
    is 0 and nothing leaks backwards from padding.
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    returns = advantages + values
    return advantages * mask, returns * mask


def logprobs_from_logits(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log p(token) for each position, computed in float32."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at each position, in float32."""
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def scores_at_last_token(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each response's score [B] placed at its last token, zeros elsewhere ([B, T])."""
    token_scores = torch.zeros_like(mask, dtype=scores.dtype)
    token_scores[torch.arange(len(scores), device=mask.device), mask.sum(1).long() - 1] = scores
    return token_scores


def prefix_shaped_scores(potentials: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each response's score [B] spread over its tokens by how the reward model's view of it changes.

    `potentials[b, t]` is the reward of the text of the first t response tokens (t = 0 is the empty
    text), shape [B, T]. Token t gets potentials[t + 1] - potentials[t]; the last token gets the rest,
    so every row still sums to its score: potential-based shaping (Ng, Harada & Russell 1999), which
    at gamma = 1 leaves the return of every response, and so the optimal policy, unchanged. What it
    changes is credit: the token that makes a summary rude is the one that loses reward, instead of a
    score at the end that GAE (lambda < 1) hands mostly to the last tokens.
    """
    steps = torch.zeros_like(potentials)
    steps[:, :-1] = potentials[:, 1:] - potentials[:, :-1]
    token_scores = steps.to(scores.dtype) * mask
    rows, last = torch.arange(len(scores), device=mask.device), mask.sum(1).long() - 1
    token_scores[rows, last] = 0.0
    token_scores[rows, last] = scores - token_scores.sum(1)
    return token_scores


def kl_penalized_rewards(
    token_scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-token rewards: the reward model's share of each token minus beta * (log pi - log pi_ref)."""
    return (token_scores - beta * (logprobs - ref_logprobs)) * mask


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate loss and the fraction of tokens where the clip was active."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    return loss, clip_fraction


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss, 0.5 * max of the squared errors, and the fraction where the clip was active."""
    clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    clip_fraction = masked_mean((clipped_error > unclipped_error).float(), mask)
    return loss, clip_fraction


def approx_kl(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """0.5 * E[(log pi - log pi_old)^2], a low-variance estimate of KL(pi_old || pi) for small steps."""
    return 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask)


class AdaptiveKLController:
    """Ziegler et al. 2019, eq. 2: beta <- beta * (1 + e * n / horizon), e = clip(KL / target - 1, +-0.2).

    `n` is the number of samples behind the KL estimate, so the adjustment per sample is the same
    whatever the batch size.
    """

    def __init__(self, init_beta: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_beta, target, horizon

    def update(self, current_kl: float, n_samples: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + proportional_error * n_samples / self.horizon


class FixedKLController:
    def __init__(self, beta: float):
        self.value = beta

    def update(self, current_kl: float, n_samples: int) -> None:
        pass


def kl_controller(cfg: TrainPPOConfig) -> AdaptiveKLController | FixedKLController:
    if cfg.adaptive_kl:
        return AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
    return FixedKLController(cfg.kl_coef)


# --- the model: LoRA policy (reference = adapter disabled) and a value head --------------------------


class ValueHead(nn.Module):
    """V(s_t) = w . h_t + b on the last hidden state. Zero-initialised (as in lm-human-preferences),
    so the first values are 0 and the first advantages are the (gamma * lam)-discounted rewards."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden).squeeze(-1)


@dataclass
class PPOModel:
    policy: PeftModel  # under `policy.disable_adapter()` it is the reference policy
    value_head: ValueHead
    tokenizer: object
    family: Family
    precision: str = "fp32"  # resolved: fp32, bf16 or fp16 (autocast dtype; weights stay fp32)
    # Lowest layer holding the PPO adapter when `top_layers` confines it (None: every layer). What
    # lies below it is frozen, so each rollout computes its output once (`Rollout.frozen`) and the
    # reference pass and every update epoch start from there.
    frozen_from: int | None = None

    @property
    def device(self) -> torch.device:
        return self.value_head.linear.weight.device

    def to(self, device_: torch.device) -> PPOModel:
        self.policy.to(device_)
        self.value_head.to(device_)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        adapter = [p for p in self.policy.parameters() if p.requires_grad]
        return adapter + list(self.value_head.parameters())


def build_ppo_model(model_dir: str | Path, sft_adapters: list[str | Path], cfg: TrainPPOConfig,
                    precision: str = "fp32") -> PPOModel:
    """Base model with the SFT adapter(s) merged, a fresh PPO LoRA adapter on top, and a value head.

    Dropout is zeroed in the config (T5's attention dropout is a float there, not a module), so the
    log-probs of the rollout and of the update come from the same function.
    """
    if sft_adapters:
        merged, tokenizer, family = load_with_adapters(model_dir, sft_adapters, no_dropout=True)
        merged = merged.merge_and_unload()
    else:
        merged, tokenizer, family = load_model(model_dir, no_dropout=True)
    targets = lora_targets(merged, cfg.target_modules)
    frozen_from = None
    if cfg.top_layers is not None:
        targets = top_layer_targets(merged, targets, cfg.top_layers)
        if family.caches_frozen_layers(merged.config):
            frozen_from = lowest_layer(targets)
    policy = attach_lora(merged, family, cfg.r, cfg.alpha, dropout=0.0, targets=targets)
    if precision != "fp32":
        store_frozen_linears_in(policy, DTYPES[precision])
    value_head = ValueHead(merged.config.hidden_size)
    return PPOModel(policy, value_head, tokenizer, family, precision, frozen_from)


def store_frozen_linears_in(model: nn.Module, dtype: torch.dtype) -> None:
    """Keep the frozen nn.Linear weights in `dtype` (bf16 or fp16), for use under that autocast only.

    Autocast rounds every fp32 weight to bf16 before each matmul, so the results are the same; but
    it caches those copies only for weights that require grad, so frozen weights were re-cast on
    every call -- each generated token re-cast the whole model. Embeddings, norms (the residual
    stream stays fp32) and the trainable LoRA weights stay as they are; a tied output layer gets
    its own bf16 copy of the (frozen) embedding matrix.
    """
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    if output.weight is embedding:
        output.weight = nn.Parameter(embedding.detach().to(dtype), requires_grad=False)
    for module in model.modules():
        if isinstance(module, nn.Linear) and not module.weight.requires_grad:
            module.to(dtype)


def save_ppo_model(ppo: PPOModel, out_dir: str | Path) -> None:
    """The PPO adapter (peft format) plus `value_head.safetensors`."""
    ppo.policy.save_pretrained(str(out_dir))
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in ppo.value_head.state_dict().items()}
    save_file(state, str(Path(out_dir, VALUE_HEAD_FILE)))


def load_value_head(ppo_dir: str | Path, hidden_size: int) -> ValueHead:
    value_head = ValueHead(hidden_size)
    value_head.load_state_dict(load_file(str(Path(ppo_dir, VALUE_HEAD_FILE))))
    return value_head


def forward_policy(ppo: PPOModel, batch: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Float32 logits [B, T, V] for the response tokens, values [B, T] of the states before them, and
    the frozen layers' output (None unless `ppo.frozen_from`); a batch that already holds the
    latter (`batch.frozen`) runs only the layers above it.

    The transformer runs under the model's autocast precision; the output layer, softmax and the
    value head run in float32, so PPO's probability ratios are not ratios of rounded logits.
    """
    with autocast(ppo.device, ppo.precision), float32_output_layer(ppo.policy):
        logits, hidden, frozen = ppo.family.forward_response(
            ppo.policy, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask,
            frozen_from=ppo.frozen_from, frozen=batch.frozen,
        )
    return logits.float(), ppo.value_head(hidden.float()), frozen


# --- prompts and rollouts ---------------------------------------------------------------------------


def render_prompts(dialogues: list[str], ppo: PPOModel, base: BaseConfig) -> list[str]:
    return [fit_dialogue(ppo.tokenizer, ppo.family, base.prompt, d, base.max_source_tokens) for d in dialogues]


def hardest_dialogues(dialogues: list[str], reward_fn: RewardFn, count: int | None) -> list[str]:
    """The `count` dialogues whose own text the reward model scores lowest, most toxic first.

    A dialogue full of insults is where a summarizer is tempted to repeat them; training on those
    keeps the reward informative in every batch instead of near-constant on polite chats.
    """
    if count is None or count >= len(dialogues):
        return list(dialogues)
    scores = reward_fn(list(dialogues)).tolist()
    order = sorted(range(len(dialogues)), key=lambda index: scores[index])
    return [dialogues[index] for index in order[:count]]


def prompt_batches(prompts: list[str], batch_size: int, seed: int, samples_per_prompt: int = 1) -> Iterator[list[str]]:
    """Endless batches of prompts, shuffled once with `seed` and cycled; each prompt appears
    `samples_per_prompt` times in a row, so a batch holds batch_size / samples_per_prompt dialogues."""
    order = list(prompts)
    random.Random(seed).shuffle(order)
    stream = itertools.cycle(order)
    while True:
        distinct = [next(stream) for _ in range(batch_size // samples_per_prompt)]
        yield [prompt for prompt in distinct for _ in range(samples_per_prompt)]


def leave_one_out_baselines(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """For each score, the mean score of the other samples of its prompt (rows in groups of
    `group_size` consecutive samples): RLOO's baseline (Ahmadian et al. 2024, arXiv:2402.14740).
    It cancels how toxic a dialogue is, leaving how this summary compares with its siblings."""
    groups = scores.view(-1, group_size)
    return ((groups.sum(1, keepdim=True) - groups) / (group_size - 1)).reshape(-1)


@dataclass
class Rollout:
    """One batch of experience; every field is a tensor with the batch in its first dimension."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor  # float: 1.0 up to and including the first stop token
    frozen: torch.Tensor | None = None  # output of the layers below the PPO adapter (see PPOModel)
    logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> Rollout:
        rows = {f.name: getattr(self, f.name) for f in fields(self)}
        return Rollout(**{name: None if value is None else value[index] for name, value in rows.items()})


@torch.no_grad()
def sample_responses(ppo: PPOModel, prompts: list[str], max_new_tokens: int) -> Rollout:
    """Pure sampling (temperature 1, no top-k/top-p) so the samples come from pi itself."""
    stops = stop_token_ids(ppo.tokenizer)
    prompt = pad_prompts(ppo.tokenizer, ppo.family, prompts, ppo.device)
    with autocast(ppo.device, ppo.precision):
        generated = ppo.policy.generate(
            **prompt, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
            eos_token_id=stops, pad_token_id=ppo.tokenizer.pad_token_id,
        )
    response_ids = ppo.family.response_ids(generated, prompt["input_ids"].shape[1])
    response_mask = response_mask_until_stop(response_ids, stops)
    response_ids = response_ids.masked_fill(response_mask == 0, ppo.tokenizer.pad_token_id)
    return Rollout(prompt["input_ids"], prompt["attention_mask"], response_ids, response_mask)


def ends_at_stop(response_ids: torch.Tensor, response_mask: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """True for each response whose last unmasked token is a stop token (bool [B]); False when the
    sample was cut at max_new_tokens before its end of turn."""
    last = response_mask.sum(1).long().clamp(min=1) - 1
    last_tokens = response_ids.gather(1, last.unsqueeze(1)).squeeze(1)
    return torch.isin(last_tokens, torch.tensor(stop_ids, device=response_ids.device))


def response_text(tokenizer, token_ids: torch.Tensor) -> str:
    """Text of response tokens as the reward model sees it: special tokens dropped, stripped."""
    return tokenizer.decode(token_ids.tolist(), skip_special_tokens=True).strip()


def decode_responses(tokenizer, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    """The summary text alone: tokens up to the stop token."""
    lengths = response_mask.sum(1).long().tolist()
    return [response_text(tokenizer, row[:n]) for row, n in zip(response_ids, lengths)]


def prefix_potentials(tokenizer, response_ids: torch.Tensor, response_mask: torch.Tensor,
                      reward_fn: RewardFn) -> torch.Tensor:
    """Reward of the text of each response's first t tokens, t = 0 .. length - 1 ([B, T], 0 past the end).

    One reward_fn call over every prefix of the batch (about B * T / 2 short texts): cheap for a
    bag-of-words classifier such as profanity-check, a real cost for a transformer classifier.
    """
    lengths = response_mask.sum(1).long().tolist()
    texts = [response_text(tokenizer, row[:t]) for row, n in zip(response_ids, lengths) for t in range(n)]
    flat = reward_fn(texts).float()
    potentials = torch.zeros(response_mask.shape, dtype=torch.float32)  # filled on the host, moved once
    for row, chunk in enumerate(flat.cpu().split(lengths)):
        potentials[row, :len(chunk)] = chunk
    return potentials.to(response_mask.device)


@torch.no_grad()
def greedy_baselines(ppo: PPOModel, prompts: list[str], reward_fn: RewardFn, max_new_tokens: int,
                     batch_size: int) -> dict[str, float]:
    """Reward of the reference (SFT) policy's greedy summary of each distinct prompt.

    ReMax (Li et al. 2023, arXiv:2310.10505) uses the greedy response's reward as a baseline.
    Here it is subtracted from the score of every sample of that prompt: a per-prompt constant,
    so the KL-regularised optimum does not move, but with a handful of samples per step and a
    value head that starts at zero, the advantage then says "less toxic than the SFT summary of
    this dialogue" rather than mostly "this dialogue was not an argument".
    """
    distinct = list(dict.fromkeys(prompts))
    with ppo.policy.disable_adapter():
        summaries = generate_summaries(ppo.policy, ppo.tokenizer, ppo.family, distinct, batch_size, max_new_tokens,
                                       precision=ppo.precision, show_progress=False)
    return dict(zip(distinct, reward_fn(summaries).float().tolist()))


# --- one PPO iteration --------------------------------------------------------------------------------


@torch.no_grad()
def collect_rollout(ppo: PPOModel, prompts: list[str], reward_fn: RewardFn, cfg: TrainPPOConfig,
                    beta: float, baselines: torch.Tensor | None = None) -> tuple[Rollout, dict[str, float]]:
    """Steps 1-6 of a PPO iteration: experience with advantages, ready for the update.

    `baselines` (one per prompt, see `greedy_baselines`) are subtracted from the reward-model scores;
    with `reward_baseline: leave_one_out` the baselines come from the batch itself.
    """
    started = time.perf_counter()
    # 1. rollout: sample a summary per prompt and score its text alone
    rollout = sample_responses(ppo, prompts, cfg.max_new_tokens)
    mask = rollout.response_mask
    sampled = time.perf_counter()
    raw_scores = reward_fn(decode_responses(ppo.tokenizer, rollout.response_ids, mask)).float().to(ppo.device)
    assert raw_scores.shape == (len(prompts),), f"reward_fn must return one reward per text, got {raw_scores.shape}"
    scored = time.perf_counter()

    # 2. old log-probs and values, from the same forward pass the update uses (generate's scores come
    #    from a different, cached computation), so that the ratios start at 1; minibatch-sized chunks,
    #    so the float32 [rows, T, vocab] logits never exist for the whole batch at once
    rollout.logprobs, rollout.values, rollout.frozen, entropies = chunked_logprobs(ppo, rollout, cfg.minibatch_size)
    entropy = masked_mean(entropies, mask)

    # 3. reference log-probs: the same weights with the PPO adapter switched off
    with ppo.policy.disable_adapter():
        rollout.ref_logprobs, *_ = chunked_logprobs(ppo, rollout, cfg.minibatch_size)

    # 4. rewards: score (minus the prompt's baseline) at the last token, or spread over the tokens by
    #    `reward_shaping: prefix`; -beta * KL per token; a summary cut before its end of turn gets
    #    `unfinished_score`, so rambling to the cap never pays
    finished = ends_at_stop(rollout.response_ids, mask, stop_token_ids(ppo.tokenizer))
    scores = raw_scores
    if cfg.unfinished_score is not None:
        scores = torch.where(finished, raw_scores, torch.full_like(raw_scores, cfg.unfinished_score))
    if cfg.reward_baseline == "leave_one_out":
        baselines = leave_one_out_baselines(scores, cfg.samples_per_prompt)
    gains = scores if baselines is None else scores - baselines.to(scores)
    rollout.scores = gains if cfg.reward_clip is None else gains.clamp(-cfg.reward_clip, cfg.reward_clip)
    if cfg.reward_shaping == "prefix":
        potentials = prefix_potentials(ppo.tokenizer, rollout.response_ids, mask, reward_fn)
        token_scores = prefix_shaped_scores(potentials, rollout.scores, mask)
    else:
        token_scores = scores_at_last_token(rollout.scores, mask)
    rollout.rewards = kl_penalized_rewards(token_scores, rollout.logprobs, rollout.ref_logprobs, mask, beta)
    if cfg.whiten_rewards:
        rollout.rewards = masked_whiten(rollout.rewards, mask, shift_mean=False) * mask

    # 5. GAE: advantages and value targets
    rollout.advantages, rollout.returns = gae_advantages(rollout.rewards, rollout.values, mask, cfg.gamma, cfg.lam)

    # 6. whiten advantages over the whole batch (not per minibatch)
    if cfg.whiten_advantages:
        rollout.advantages = masked_whiten(rollout.advantages, mask) * mask

    sequence_kl = ((rollout.logprobs - rollout.ref_logprobs) * mask).sum(1)
    stats = {
        "reward_mean": raw_scores.mean().item(),
        "reward_std": raw_scores.std().item() if len(raw_scores) > 1 else 0.0,
        "reward_gain_mean": gains.mean().item(),  # after the unfinished-summary score and the baseline
        "kl": sequence_kl.mean().item(),
        "entropy": entropy.item(),
        "beta": beta,
        "response_length": mask.sum(1).mean().item(),
        "unfinished_fraction": 1 - finished.float().mean().item(),
        "time_generate_s": sampled - started,
        "time_reward_s": scored - sampled,
        "time_forward_s": time.perf_counter() - scored,  # steps 2-3
    }
    return rollout, stats


def chunked_logprobs(ppo: PPOModel, rollout: Rollout, chunk_size: int):
    """Log-probs [B, T] of the rollout's response tokens, values [B, T], the frozen layers' output
    (see `forward_policy`) and per-token entropies [B, T], computed `chunk_size` rows at a time."""
    parts = []
    for rows in torch.arange(len(rollout.response_ids), device=rollout.response_ids.device).split(chunk_size):
        chunk = rollout.select(rows)
        logits, values, frozen = forward_policy(ppo, chunk)
        parts.append((logprobs_from_logits(logits, chunk.response_ids), values, frozen, entropy_from_logits(logits)))
        del logits  # [rows, T, vocab] float32: the largest tensor of the step
    logprobs, values, frozen, entropies = (list(column) for column in zip(*parts))
    return torch.cat(logprobs), torch.cat(values), None if frozen[0] is None else torch.cat(frozen), torch.cat(entropies)


def minibatch_update(ppo: PPOModel, optimizer: torch.optim.Optimizer, batch: Rollout,
                     cfg: TrainPPOConfig, scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """One gradient step on the clipped policy loss + vf_coef * clipped value loss (loss-scaled under fp16)."""
    logits, values, _ = forward_policy(ppo, batch)
    logprobs = logprobs_from_logits(logits, batch.response_ids)
    mask = batch.response_mask
    pg_loss, clip_fraction = policy_loss(logprobs, batch.logprobs, batch.advantages, mask, cfg.clip_range)
    vf_loss, vf_clip_fraction = value_loss(values, batch.values, batch.returns, mask, cfg.clip_range_value)
    scaler = scaler or torch.amp.GradScaler(enabled=False)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(pg_loss + cfg.vf_coef * vf_loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(ppo.trainable_parameters(), cfg.max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    return {
        "policy_loss": pg_loss.item(),
        "value_loss": vf_loss.item(),
        "clip_fraction": clip_fraction.item(),
        "value_clip_fraction": vf_clip_fraction.item(),
        "approx_kl": approx_kl(logprobs.detach(), batch.logprobs, mask).item(),
    }


def ppo_epochs(ppo: PPOModel, optimizer: torch.optim.Optimizer, rollout: Rollout, cfg: TrainPPOConfig,
               generator: torch.Generator, scaler: torch.amp.GradScaler | None = None) -> list[dict[str, float]]:
    """Several epochs of shuffled minibatch updates; stops early once approx KL passes the threshold,
    since the clipped objective no longer holds the policy near the one that sampled the batch."""
    updates: list[dict[str, float]] = []
    for _epoch in range(cfg.ppo_epochs):
        for index in torch.randperm(cfg.batch_size, generator=generator).split(cfg.minibatch_size):
            updates.append(minibatch_update(ppo, optimizer, rollout.select(index.to(ppo.device)), cfg, scaler))
            if cfg.early_stop_approx_kl is not None and updates[-1]["approx_kl"] > cfg.early_stop_approx_kl:
                return updates
    return updates


def ppo_step(ppo: PPOModel, optimizer: torch.optim.Optimizer, kl_ctl, prompts: list[str], reward_fn: RewardFn,
             cfg: TrainPPOConfig, generator: torch.Generator,
             baselines: dict[str, float] | None = None, scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """One PPO iteration on a batch of prompts; returns its statistics."""
    batch_baselines = None if baselines is None else torch.tensor([baselines[p] for p in prompts])
    rollout, stats = collect_rollout(ppo, prompts, reward_fn, cfg, kl_ctl.value, batch_baselines)  # steps 1-6

    # 7. PPO epochs over shuffled minibatches
    started = time.perf_counter()
    updates = ppo_epochs(ppo, optimizer, rollout, cfg, generator, scaler)
    stats.update({key: sum(update[key] for update in updates) / len(updates) for key in updates[0]})
    stats["minibatch_updates"] = len(updates)
    stats["time_update_s"] = time.perf_counter() - started

    # 8. adapt beta towards the target KL (no-op when fixed)
    kl_ctl.update(stats["kl"], cfg.batch_size)
    return stats


def train_ppo(ppo: PPOModel, prompts: list[str], reward_fn: RewardFn, cfg: TrainPPOConfig, seed: int,
              on_step: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Run `cfg.steps` PPO iterations on cycled batches of `prompts`; returns each step's statistics."""
    if not prompts:
        raise DataError("train_ppo: no training prompts")
    assert cfg.num_minibatches * cfg.minibatch_size == cfg.batch_size
    torch.manual_seed(seed)  # sampling in generate
    generator = torch.Generator().manual_seed(seed)  # minibatch shuffling
    optimizer = torch.optim.AdamW(ppo.trainable_parameters(), lr=cfg.lr, eps=ADAM_EPS, weight_decay=0.0)
    kl_ctl = kl_controller(cfg)
    # fp16's narrow range underflows small gradients; bf16 and fp32 need no loss scaling
    scaler = torch.amp.GradScaler(ppo.device.type, enabled=ppo.precision == "fp16")
    baselines = None
    if cfg.reward_baseline == "greedy":
        baselines = greedy_baselines(ppo, prompts, reward_fn, cfg.max_new_tokens, cfg.batch_size)
    batches = prompt_batches(prompts, cfg.batch_size, seed, cfg.samples_per_prompt)
    history = []
    progress = tqdm(range(cfg.steps), desc="ppo", unit="step")
    for _step in progress:
        stats = ppo_step(ppo, optimizer, kl_ctl, next(batches), reward_fn, cfg, generator, baselines, scaler)
        history.append(stats)
        progress.set_postfix(reward=f"{stats['reward_mean']:.3f}", kl=f"{stats['kl']:.2f}")
        if on_step is not None:
            on_step(stats)
    return history


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
