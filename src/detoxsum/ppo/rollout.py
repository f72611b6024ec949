"""Rollouts: the prompts PPO trains on, sampled summaries, their texts and the scoring passes.

A `Rollout` is one batch of experience; `sample_responses` fills its ids and mask, and the trainer
adds log-probs, values, rewards and advantages. A response ends at its first end token (end of turn,
eos or padding), the same rule `tokens.decode_responses` applies to evaluation's summaries.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from detoxsum.config import BaseConfig
from detoxsum.models.cache import with_roomy_cache
from detoxsum.models.generation import generate_summaries, pad_prompts
from detoxsum.models.prompts import fit_dialogue
from detoxsum.models.tokens import end_token_ids, response_mask, response_text, stop_token_ids
from detoxsum.ppo.functional import entropy_from_logits, logprobs_from_logits
from detoxsum.ppo.model import PPOModel, forward_policy
from detoxsum.ppo.types import Rollout
from detoxsum.precision import autocast


@dataclass
class DialogueReward:
    """A reward that reads each summary together with its dialogue (`train_ppo.reward.kind:
    trained`): `score(summaries, dialogues) -> [B]`. The trainer knows rendered prompts, not
    dialogues: `dialogue_of` maps each prompt back to its dialogue, and a text missing from it
    stands for itself (hardest_dialogues scores a dialogue as the summary of itself)."""

    score: Callable[[list[str], list[str]], torch.Tensor]
    dialogue_of: dict[str, str] = field(default_factory=dict)


# texts -> one reward per text, shape [B] (a RewardModel's `rewards`, or any function in tests);
# or a DialogueReward, which also reads the dialogue each text summarizes.
RewardFn = Callable[[list[str]], torch.Tensor] | DialogueReward


def score_texts(reward_fn: RewardFn, texts: list[str], prompts: list[str] | None) -> torch.Tensor:
    """The reward [B] of each text; `prompts[i]` is the prompt text i answers (a DialogueReward
    needs them, a reward of the text alone ignores them)."""
    if not isinstance(reward_fn, DialogueReward):
        return reward_fn(texts)
    if prompts is None or len(prompts) != len(texts):
        raise ValueError("a DialogueReward needs one prompt per text")
    return reward_fn.score(texts, [reward_fn.dialogue_of.get(prompt, prompt) for prompt in prompts])


def render_prompts(dialogues: list[str], ppo: PPOModel, base: BaseConfig) -> list[str]:
    return [fit_dialogue(ppo.tokenizer, ppo.family, base.prompt, d, base.max_source_tokens) for d in dialogues]


def hardest_dialogues(dialogues: list[str], reward_fn: RewardFn, count: int | None) -> list[str]:
    """The `count` dialogues whose own text the reward model scores lowest, most toxic first.

    A dialogue full of insults is where a summarizer is tempted to repeat them; training on those
    keeps the reward informative in every batch instead of near-constant on polite chats.
    """
    if count is None or count >= len(dialogues):
        return list(dialogues)
    scores = score_texts(reward_fn, list(dialogues), list(dialogues)).tolist()
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


@torch.no_grad()
def sample_responses(ppo: PPOModel, prompts: list[str], max_new_tokens: int) -> Rollout:
    """Pure sampling (temperature 1, no top-k/top-p) so the samples come from pi itself."""
    stops = stop_token_ids(ppo.tokenizer)
    prompt = pad_prompts(ppo.tokenizer, ppo.family, prompts, ppo.device)
    with autocast(ppo.device, ppo.precision):
        generated = ppo.policy.generate(
            **with_roomy_cache(ppo.policy, prompt), do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
            eos_token_id=stops, pad_token_id=ppo.tokenizer.pad_token_id,
        )
    response_ids = ppo.family.response_ids(generated, prompt["input_ids"].shape[1])
    mask = response_mask(response_ids, end_token_ids(ppo.tokenizer))
    response_ids = response_ids.masked_fill(mask == 0, ppo.tokenizer.pad_token_id)
    return Rollout(prompt["input_ids"], prompt["attention_mask"], response_ids, mask)


def ends_at_stop(response_ids: torch.Tensor, mask: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """True for each response whose last unmasked token is a stop token (bool [B]); False when the
    sample was cut at max_new_tokens before its end of turn."""
    last = mask.sum(1).long().clamp(min=1) - 1
    last_tokens = response_ids.gather(1, last.unsqueeze(1)).squeeze(1)
    return torch.isin(last_tokens, torch.tensor(stop_ids, device=response_ids.device))


def prefix_potentials(tokenizer, response_ids: torch.Tensor, mask: torch.Tensor,
                      reward_fn: RewardFn, prompts: list[str] | None = None) -> torch.Tensor:
    """Reward of the text of each response's first t tokens, t = 0 .. length - 1 ([B, T], 0 past the end).

    One reward_fn call over every prefix of the batch (about B * T / 2 short texts): cheap for a
    bag-of-words classifier such as profanity-check, a real cost for a transformer classifier.
    """
    lengths = mask.sum(1).long().tolist()
    texts = [response_text(tokenizer, row[:t]) for row, n in zip(response_ids, lengths) for t in range(n)]
    prefix_prompts = None if prompts is None else [prompt for prompt, n in zip(prompts, lengths) for _ in range(n)]
    flat = score_texts(reward_fn, texts, prefix_prompts).float()
    potentials = torch.zeros(mask.shape, dtype=torch.float32)  # filled on the host, moved once
    for row, chunk in enumerate(flat.cpu().split(lengths)):
        potentials[row, :len(chunk)] = chunk
    return potentials.to(mask.device)


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
    return dict(zip(distinct, score_texts(reward_fn, summaries, distinct).float().tolist()))


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
