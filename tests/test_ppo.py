"""PPO: the math helpers against plain loops and hand-worked answers, then the whole loop on the tiny
T5 and Llama (policy == reference at the start, a toy reward goes up, only the adapter and value
head move, the saved adapter loads on top of the SFT adapter), and the stage end to end.

Run: `HF_HUB_OFFLINE=1 pytest tests/test_ppo.py -q` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import fixture_rows

from detoxsum.config import BaseConfig, TrainPPOConfig
from detoxsum.training.lora import attach_lora, lora_targets
from detoxsum.models.adapters import load_with_adapters
from detoxsum.models.generation import generate_summaries, pad_prompts
from detoxsum.models.loading import load_model, load_tokenizer
from detoxsum.models.tokens import decode_responses, response_mask, stop_token_ids
from detoxsum.ppo.functional import (
    adaptive_beta,
    entropy_from_logits,
    gae_advantages,
    kl_penalized_rewards,
    leave_one_out_baselines,
    logprobs_from_logits,
    masked_mean,
    masked_scale,
    masked_var,
    masked_whiten,
    policy_loss,
    prefix_shaped_scores,
    scores_at_last_token,
    value_loss,
)
from detoxsum.ppo.model import build_ppo_model, forward_policy, load_value_head, save_ppo_model
from detoxsum.ppo.rollout import (
    chunked_logprobs, ends_at_stop, greedy_baselines, hardest_dialogues, prefix_potentials, prompt_batches, render_prompts, sample_responses,
)
from detoxsum.errors import TrainingDiverged
from detoxsum.ppo.trainer import (
    collect_rollout, minibatch_update, next_beta, ppo_epochs, stop_if_diverged, train_ppo,
)


SHORT_BASE = BaseConfig(max_source_tokens=48)
# Responses of length 5, 3, 1 and 4 in a batch padded to 5 tokens.
LENGTHS = [5, 3, 1, 4]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one thread than on two threads fighting over two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def length_mask(lengths: list[int], width: int) -> torch.Tensor:
    return torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths])


def vowel_count(texts: list[str]) -> torch.Tensor:
    """Toy reward: vowels in the summary. Dense, so a tiny random model can learn it in a few steps."""
    return torch.tensor([float(sum(text.count(v) for v in "aeiou")) for text in texts])


def text_length(texts: list[str]) -> torch.Tensor:
    """Toy reward that grows with every token, whatever a random tiny model writes."""
    return torch.tensor([float(len(text)) for text in texts])


def paired_rollouts(model_dir: Path, reward_fn, max_new_tokens: int, **changes):
    """The same sampled batch of 4 collected under default settings and with `changes` to the config."""
    cfg = TrainPPOConfig(batch_size=4, minibatch_size=2, max_new_tokens=max_new_tokens)
    changed_cfg = TrainPPOConfig(batch_size=4, minibatch_size=2, max_new_tokens=max_new_tokens, **changes)
    ppo = build_ppo_model(model_dir, [], cfg)
    prompts = render_prompts([row["dialogue"] for row in fixture_rows(4)], ppo, SHORT_BASE)
    torch.manual_seed(0)
    plain, plain_stats = collect_rollout(ppo, prompts, reward_fn, cfg, beta=0.05)
    torch.manual_seed(0)
    changed, stats = collect_rollout(ppo, prompts, reward_fn, changed_cfg, beta=0.05)
    assert torch.equal(changed.response_ids, plain.response_ids)
    return ppo, (plain, plain_stats), (changed, stats)


# --- pure helpers ---------------------------------------------------------------------------------


def test_masked_mean_var_and_whiten_match_a_plain_loop():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(4, 5, generator=generator) * 3 + 1
    mask = length_mask(LENGTHS, 5)
    kept = [values[row, t].item() for row in range(4) for t in range(LENGTHS[row])]
    mean = sum(kept) / len(kept)
    variance = sum((x - mean) ** 2 for x in kept) / (len(kept) - 1)
    assert masked_mean(values, mask).item() == pytest.approx(mean, rel=1e-5)
    assert masked_var(values, mask).item() == pytest.approx(variance, rel=1e-5)
    assert masked_mean(values, mask, dim=1).tolist() == pytest.approx(
        [sum(values[row, :n].tolist()) / n for row, n in enumerate(LENGTHS)], rel=1e-5
    )

    whitened = masked_whiten(values, mask)
    for row in range(4):
        for t in range(LENGTHS[row]):
            expected = (values[row, t].item() - mean) / math.sqrt(variance + 1e-8)
            assert whitened[row, t].item() == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert masked_mean(whitened, mask).item() == pytest.approx(0.0, abs=1e-5)
    scaled = masked_scale(values, mask)
    torch.testing.assert_close(scaled, values * mask / math.sqrt(variance + 1e-8))


def test_reward_whitening_scales_every_return_alike_so_length_earns_nothing():
    """The same reward on every token, for responses of 5, 3, 1 and 4 tokens: whitening must keep the
    returns in proportion (trl's shift_mean=False formula adds n * mu * (1 - 1/sigma) to each)."""
    mask = length_mask(LENGTHS, 5)
    rewards = torch.full((4, 5), 0.3) * mask + torch.tensor([[0.0, 0, 0, 0, 0.5]] * 4) * mask
    scaled = masked_scale(rewards, mask)
    ratios = scaled.sum(1) / rewards.sum(1)
    torch.testing.assert_close(ratios, torch.full((4,), ratios[0].item()))


def test_gae_matches_a_plain_loop_for_responses_of_different_lengths():
    generator = torch.Generator().manual_seed(1)
    rewards = torch.randn(4, 5, generator=generator)
    values = torch.randn(4, 5, generator=generator)
    mask = length_mask(LENGTHS, 5)
    gamma, lam = 0.9, 0.8
    advantages, returns = gae_advantages(rewards, values, mask, gamma, lam)
    for row, length in enumerate(LENGTHS):
        r, v = rewards[row, :length].tolist(), values[row, :length].tolist()
        expected, running = [0.0] * length, 0.0
        for t in reversed(range(length)):
            next_value = v[t + 1] if t + 1 < length else 0.0  # the episode ends with the response
            running = r[t] + gamma * next_value - v[t] + gamma * lam * running
            expected[t] = running
        assert advantages[row, :length].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert returns[row, :length].tolist() == pytest.approx([a + b for a, b in zip(expected, v)], rel=1e-5)
        assert advantages[row, length:].abs().sum() == 0 and returns[row, length:].abs().sum() == 0


def test_response_mask_keeps_tokens_up_to_and_including_the_first_stop():
    stop, pad = 2, 0
    response_ids = torch.tensor([[5, 6, stop, pad, pad], [5, stop, 7, stop, 8], [5, 6, 7, 8, 9], [stop, 2, 2, 2, 2]])
    assert response_mask(response_ids, [stop, 99]).tolist() == length_mask([3, 2, 5, 1], 5).tolist()


def test_kl_penalty_on_every_token_and_score_on_the_last():
    mask = length_mask([3, 1], 3)
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -9.0, -9.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, 0.0, 0.0]])
    token_scores = scores_at_last_token(torch.tensor([10.0, 20.0]), mask)
    rewards = kl_penalized_rewards(token_scores, logprobs, ref_logprobs, mask, beta=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.1, 10.0], [20.0 - 0.1, 0.0, 0.0]]))


def test_prefix_shaping_credits_the_token_that_changed_the_score_and_keeps_each_sum():
    mask = length_mask([4, 2, 1], 4)
    # reward of the first t tokens' text, t = 0..3; the first response turns rude at its third token;
    # phi_0 = R("") = 0.2 for every response, as for a real classifier
    potentials = torch.tensor([[0.2, 0.2, -0.9, -0.8], [0.2, 0.3, 0.0, 0.0], [0.2, 0.0, 0.0, 0.0]])
    scores = torch.tensor([-0.8, 0.3, -2.0])  # the first two end with a stop token that adds no text
    shaped = prefix_shaped_scores(potentials, scores, mask)
    torch.testing.assert_close(shaped, torch.tensor([
        [0.0, -1.1, 0.1, 0.0],  # the stop token earns nothing (not R("") = phi_0)
        [0.1, 0.0, 0.0, 0.0],
        [-2.0 - 0.2, 0.0, 0.0, 0.0],
    ]))
    torch.testing.assert_close(shaped.sum(1), scores - 0.2)  # the score less a constant: same optimum
    assert (shaped * (1 - mask)).abs().sum() == 0


def test_prefix_shaping_is_potential_based_at_any_gamma():
    """Discounted return of the shaped rewards = gamma^(n-1) * score - phi_0, for every response."""
    gamma = 0.9
    mask = length_mask(LENGTHS, 5)
    potentials = torch.randn(4, 5, generator=torch.Generator().manual_seed(2)) * mask
    potentials[:, 0] = 0.25
    scores = torch.tensor([1.0, -2.0, 0.5, 3.0])
    shaped = prefix_shaped_scores(potentials, scores, mask, gamma)
    discounts = gamma ** torch.arange(5.0)
    lengths = torch.tensor(LENGTHS, dtype=torch.float32)
    torch.testing.assert_close((shaped * discounts).sum(1), gamma ** (lengths - 1) * scores - 0.25)


def test_prefix_potentials_score_every_prefix_of_each_response(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    token_lists = tokenizer(["aa bb cc", "dd"], add_special_tokens=False)["input_ids"]
    width = max(map(len, token_lists))
    response_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids in token_lists])
    mask = length_mask(list(map(len, token_lists)), width)
    seen: list[str] = []
    def recording_length(texts):
        seen.extend(texts)
        return text_length(texts)

    potentials = prefix_potentials(tokenizer, response_ids, mask, recording_length)
    prefixes = [[tokenizer.decode(ids[:t], skip_special_tokens=True).strip() for t in range(len(ids))]
                for ids in token_lists]
    assert seen == prefixes[0] + prefixes[1] and prefixes[0][0] == prefixes[1][0] == ""
    expected = torch.tensor([[float(len(text)) for text in row] + [0.0] * (width - len(row)) for row in prefixes])
    torch.testing.assert_close(potentials, expected)


def test_policy_loss_and_clip_fraction_on_hand_worked_tokens():
    ratios = torch.tensor([[1.5, 0.5, 1.0, 1.1, 0.5, 9.0]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, -2.0, -1.0, 5.0]])
    mask = torch.tensor([[1.0, 1, 1, 1, 1, 0]])  # the last token is padding and must not count
    loss, clip_fraction = policy_loss(ratios.log(), torch.zeros(1, 6), advantages, mask, clip_range=0.2)
    # per token max(-A*r, -A*clip(r)): -1.2 (clipped), -0.5, 1.0, 2.2, 0.8 (clipped)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.0 + 2.2 + 0.8) / 5, rel=1e-5)
    assert clip_fraction.item() == pytest.approx(2 / 5)


def test_value_loss_and_clip_fraction_on_hand_worked_tokens():
    old_values = torch.zeros(1, 4)
    values = torch.tensor([[0.5, 0.1, -0.5, 7.0]])
    returns = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 0]])
    loss, clip_fraction = value_loss(values, old_values, returns, mask, clip_range=0.2)
    # squared errors max(unclipped, clipped): 0.64 (clipped to 0.2), 0.81, 0.25 (unclipped wins)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81 + 0.25) / 3, rel=1e-5)
    assert clip_fraction.item() == pytest.approx(1 / 3)


def test_logprobs_and_entropy_from_logits():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, -1.0]]])
    logprobs = logprobs_from_logits(logits, torch.tensor([[1, 0]]))
    probs = torch.tensor([2.0, 0.0, 0.0, -1.0]).exp() / torch.tensor([2.0, 0.0, 0.0, -1.0]).exp().sum()
    assert logprobs[0].tolist() == pytest.approx([math.log(0.25), math.log(probs[0].item())], rel=1e-5)
    entropy = entropy_from_logits(logits)
    assert entropy[0].tolist() == pytest.approx([math.log(4), -(probs * probs.log()).sum().item()], rel=1e-5)


def test_adaptive_beta_moves_towards_the_target_kl_and_fixed_beta_stays():
    beta = adaptive_beta(0.1, current_kl=12.0, target_kl=6.0, horizon=1000, n_samples=10)  # error 1.0 -> 0.2
    assert beta == pytest.approx(0.1 * (1 + 0.2 * 10 / 1000))
    assert adaptive_beta(beta, 6.6, 6.0, 1000, 10) == pytest.approx(beta * (1 + 0.1 * 10 / 1000))
    assert adaptive_beta(beta, 0.0, 6.0, 1000, 10) == pytest.approx(beta * (1 - 0.2 * 10 / 1000))
    adaptive = TrainPPOConfig(batch_size=10, minibatch_size=5, adaptive_kl=True, target_kl=6.0, kl_horizon=1000)
    assert next_beta(0.1, 12.0, adaptive) == pytest.approx(0.1 * (1 + 0.2 * 10 / 1000))
    assert next_beta(0.1, 100.0, TrainPPOConfig(adaptive_kl=False)) == 0.1


# --- the model ------------------------------------------------------------------------------------


def randomize_lora_b(model: torch.nn.Module, seed: int) -> None:
    """Stand in for training: random, non-zero LoRA B matrices, so the adapter changes the model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


def save_sft_adapter(model_dir: Path, out_dir: Path) -> Path:
    """A stand-in for train_lora's adapter: random, non-zero B matrices, so merging it matters."""
    model, _, family = load_model(model_dir)
    peft_model = attach_lora(model, family, r=4, alpha=8, dropout=0.0, targets=lora_targets(model, None))
    randomize_lora_b(peft_model, seed=3)
    peft_model.save_pretrained(out_dir)
    return out_dir


def sharpened_copy(model_dir: Path, out_dir: Path, std: float = 0.5) -> Path:
    """The tiny model with a fresh, untied output layer of `std`: the fixtures' own heads give a
    next-token distribution that is either nearly uniform (Llama: 0.02 init behind an RMSNorm, no
    adapter can move it far) or nearly deterministic (T5), and neither can learn a reward quickly."""
    model, tokenizer, _ = load_model(model_dir)
    head = model.get_output_embeddings()
    model.config.tie_word_embeddings = False
    head.weight = torch.nn.Parameter(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(0)) * std)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def test_forward_response_scores_the_tokens_generate_produced(tiny_model_dir):
    """The teacher-forced forward pass (left-padded prompts, position ids) reproduces generate's logits."""
    model, tokenizer, family = load_model(tiny_model_dir)
    dialogues = [row["dialogue"] for row in fixture_rows(2)]
    prompts = [family.prompt_text(tokenizer, "Summarize: " + d[: 40 + 60 * i]) for i, d in enumerate(dialogues)]
    batch = pad_prompts(tokenizer, family, prompts, model.device)
    assert (batch["attention_mask"] == 0).any()  # the shorter prompt is padded
    stops = stop_token_ids(tokenizer)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=False, max_new_tokens=6, eos_token_id=stops,
                             pad_token_id=tokenizer.pad_token_id, return_dict_in_generate=True, output_logits=True)
        response_ids = family.response_ids(out.sequences, batch["input_ids"].shape[1])
        mask = response_mask(response_ids, stops)
        logits, hidden, frozen = family.forward_response(model, batch["input_ids"], batch["attention_mask"],
                                                         response_ids, mask)
    expected = torch.stack(out.logits, dim=1)
    assert logits.shape == expected.shape and hidden.shape[:2] == response_ids.shape
    assert hidden.shape[2] == model.config.hidden_size and frozen is None  # no frozen_from, nothing cached
    keep = mask.bool()
    torch.testing.assert_close(logits.log_softmax(-1)[keep], expected.log_softmax(-1)[keep], atol=1e-4, rtol=1e-4)


def test_reference_is_the_sft_model_and_equals_the_fresh_policy(tiny_model_dir, tmp_path):
    """The reference pass is the merged SFT model (the PPO adapter disabled), whatever the adapter
    holds; a fresh adapter (B = 0) is that model exactly; and a step's first minibatch starts at
    ratio 1 (approx KL 0 before the step) even when the policy has moved away from the reference."""
    cfg = TrainPPOConfig(batch_size=4, minibatch_size=2, max_new_tokens=6, reward_baseline="none")
    sft_dir = save_sft_adapter(tiny_model_dir, tmp_path / "sft")
    ppo = build_ppo_model(tiny_model_dir, [sft_dir], cfg)
    prompts = render_prompts([row["dialogue"] for row in fixture_rows(4)], ppo, SHORT_BASE)
    torch.manual_seed(0)
    fresh, stats = collect_rollout(ppo, prompts, vowel_count, cfg, beta=0.05)
    assert torch.equal(fresh.logprobs, fresh.ref_logprobs) and stats["kl"] == 0.0
    assert torch.equal(fresh.values, torch.zeros_like(fresh.values))  # zero-initialised value head

    randomize_lora_b(ppo.policy, seed=7)  # a trained-looking PPO adapter
    with torch.no_grad():
        policy_logprobs, *_ = chunked_logprobs(ppo, fresh, chunk_size=2)
        with ppo.policy.disable_adapter():
            reference_logprobs, *_ = chunked_logprobs(ppo, fresh, chunk_size=2)
        sft, _, family = load_with_adapters(tiny_model_dir, [sft_dir], no_dropout=True, merge_all=True)
        sft_logits = family.forward_response(sft, fresh.prompt_ids, fresh.prompt_mask, fresh.response_ids,
                                             fresh.response_mask)[0]
    sft_logprobs = logprobs_from_logits(sft_logits, fresh.response_ids)
    keep = fresh.response_mask.bool()
    torch.testing.assert_close(reference_logprobs[keep], sft_logprobs[keep], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(policy_logprobs[keep], sft_logprobs[keep], atol=1e-3)

    torch.manual_seed(0)
    moved, stats = collect_rollout(ppo, prompts, vowel_count, cfg, beta=0.05)
    assert stats["kl"] != 0.0
    optimizer = torch.optim.AdamW(ppo.trainable_parameters(), lr=1e-2)
    first = minibatch_update(ppo, optimizer, moved.select(torch.arange(2)), cfg)
    second = minibatch_update(ppo, optimizer, moved.select(torch.arange(2)), cfg)
    assert first["approx_kl"] == 0.0 and second["approx_kl"] > 0.0  # the first step moved the policy


def test_early_stop_skips_the_minibatch_that_finds_the_policy_moved_too_far(tiny_model_dir):
    """The first minibatch measures 0 (the policy is the one that sampled the batch) and steps; the
    second finds that step's move and stops the epochs without a step of its own."""
    cfg = TrainPPOConfig(batch_size=4, minibatch_size=2, ppo_epochs=3, max_new_tokens=6, lr=5e-2,
                         reward_baseline="none", early_stop_approx_kl=1e-6)
    ppo = build_ppo_model(tiny_model_dir, [], cfg)
    prompts = render_prompts([row["dialogue"] for row in fixture_rows(4)], ppo, SHORT_BASE)
    rollout, _ = collect_rollout(ppo, prompts, text_length, cfg, beta=0.05)
    optimizer = torch.optim.AdamW(ppo.trainable_parameters(), lr=cfg.lr)
    updates = ppo_epochs(ppo, optimizer, rollout, cfg, torch.Generator().manual_seed(0))
    assert len(updates) == 2 and updates[0]["approx_kl"] == 0.0 and "policy_loss" in updates[0]
    assert updates[1] == {"approx_kl": updates[1]["approx_kl"]} and updates[1]["approx_kl"] > 1e-6
    assert {state["step"].item() for state in optimizer.state.values()} == {1}  # one optimizer step in all
    no_stop = TrainPPOConfig(batch_size=4, minibatch_size=2, ppo_epochs=3, reward_baseline="none",
                             early_stop_approx_kl=None)
    assert len(ppo_epochs(ppo, optimizer, rollout, no_stop, torch.Generator().manual_seed(0))) == 6


def test_the_prefix_rewards_count_as_reward_time_not_forward_time(tiny_llama_dir):
    """Step 5's reward calls over every prefix are reward-model time: `benchmarks/ppo_step.py` splits
    a step by these timers, so the forward passes must not carry them."""
    import time as clock

    calls = []

    def slow_reward(texts: list[str]) -> torch.Tensor:
        calls.append(len(texts))
        clock.sleep(0.5)
        return text_length(texts)

    cfg = TrainPPOConfig(batch_size=2, minibatch_size=2, max_new_tokens=4, reward_baseline="none",
                         reward_shaping="prefix")
    ppo = build_ppo_model(tiny_llama_dir, [], cfg)
    prompts = render_prompts([row["dialogue"] for row in fixture_rows(2)], ppo, SHORT_BASE)
    _, stats = collect_rollout(ppo, prompts, slow_reward, cfg, beta=0.05)
    assert len(calls) == 2  # the summaries, then their prefixes
    assert stats["time_reward_s"] >= 1.0
    assert stats["time_forward_s"] < 0.5


def test_reward_clip_clips_the_raw_scores_before_the_leave_one_out_baseline(tiny_model_dir):
    scores = torch.tensor([10.0, 1.0, -3.0, 2.0])
    _, _, (relative, _) = paired_rollouts(tiny_model_dir, lambda texts: scores[: len(texts)], 6,
                                          reward_baseline="leave_one_out", samples_per_prompt=2, reward_clip=4.0)
    # clipped: 4, 1, -3, 2; each against its sibling (clipping the differences would give 4, -4, -4, 4)
    torch.testing.assert_close(relative.scores, torch.tensor([3.0, -3.0, -5.0, 5.0]))


def test_a_non_finite_step_statistic_stops_ppo_naming_the_step_and_the_learning_rate():
    healthy = {"reward_mean": -0.1, "policy_loss": 0.01, "value_loss": 0.002, "kl": 0.3, "approx_kl": 0.004,
               "grad_norm_max": 0.8}
    stop_if_diverged(healthy, step=3, lr=5e-4)
    with pytest.raises(TrainingDiverged, match=r"^train_ppo diverged at step 3: reward_mean nan, grad_norm_max inf; "
                                               r"lower train_ppo\.lr \(now 0\.0005\)"):
        stop_if_diverged({**healthy, "reward_mean": float("nan"), "grad_norm_max": float("inf")}, step=3, lr=5e-4)


def test_a_huge_learning_rate_stops_train_ppo(tiny_model_dir):
    cfg = TrainPPOConfig(steps=4, batch_size=4, minibatch_size=2, ppo_epochs=2, lr=1e30, max_new_tokens=6,
                         reward_baseline="none", early_stop_approx_kl=None)
    ppo = build_ppo_model(tiny_model_dir, [], cfg)
    prompts = render_prompts([row["dialogue"] for row in fixture_rows(4)], ppo, SHORT_BASE)
    with pytest.raises(TrainingDiverged, match=r"train_ppo diverged at step [1-4]: .*train_ppo\.lr \(now 1e\+30\)"):
        train_ppo(ppo, prompts, text_length, cfg, seed=0)


def sampled_vowels(ppo, prompts: list[str], max_new_tokens: int) -> torch.Tensor:
    """Toy reward of one summary sampled per prompt, as a rollout samples it, from a fixed seed."""
    torch.manual_seed(1234)
    rollout = sample_responses(ppo, prompts, max_new_tokens)
    return vowel_count(decode_responses(ppo.tokenizer, rollout.response_ids, rollout.response_mask))


@pytest.mark.parametrize(("reward_baseline", "top_layers"),
                         [("none", None), ("greedy", None), ("leave_one_out", None), ("none", 1)])
def test_ppo_raises_a_toy_reward_and_moves_only_adapter_and_value_head(tiny_model_dir, tmp_path, reward_baseline,
                                                                       top_layers):
    model_dir = sharpened_copy(tiny_model_dir, tmp_path / "model")
    cfg = TrainPPOConfig(steps=20, batch_size=16, minibatch_size=8, ppo_epochs=4, lr=2e-2, r=8, alpha=16,
                         max_new_tokens=8, kl_coef=0.01, adaptive_kl=False, early_stop_approx_kl=None,
                         reward_baseline=reward_baseline, top_layers=top_layers,
                         samples_per_prompt=4 if reward_baseline == "leave_one_out" else 1)
    ppo = build_ppo_model(model_dir, [], cfg)
    frozen = {name: p.detach().clone() for name, p in ppo.policy.named_parameters() if "lora_" not in name}
    adapter = {name: p.detach().clone() for name, p in ppo.policy.named_parameters() if "lora_" in name}
    prompts = render_prompts([row["dialogue"] for row in fixture_rows(20)], ppo, SHORT_BASE)

    history = train_ppo(ppo, prompts, vowel_count, cfg, seed=0)

    # Each CPU's float rounding sends PPO down its own path (20 steps take ~4 vowels to anywhere from
    # ~5 to ~20; AVX2 once gave 3.5 -> 6), so no fixed gain over a few noisy 16-sample steps holds
    # everywhere. Instead: the trained policy against the one it started from (adapter off), 320
    # samples each from the same seed. A policy that did not move draws the very same summaries (gain
    # exactly 0), so the margin need only clear sampling noise; lr ~0 or a zero reward fails it.
    trained = sampled_vowels(ppo, prompts * 16, cfg.max_new_tokens)
    with ppo.policy.disable_adapter():
        initial = sampled_vowels(ppo, prompts * 16, cfg.max_new_tokens)
    standard_error = math.sqrt((trained.var() + initial.var()).item() / len(trained))
    gain = (trained.mean() - initial.mean()).item()
    assert gain > 4 * standard_error, (gain, standard_error, [round(stats["reward_mean"], 2) for stats in history])
    assert history[-1]["kl"] > 0
    for name, parameter in ppo.policy.named_parameters():
        if name in frozen:
            assert torch.equal(parameter, frozen[name]), f"base weight {name} changed"
    assert any(not torch.equal(p, adapter[n]) for n, p in ppo.policy.named_parameters() if n in adapter)
    assert ppo.value_head.linear.weight.abs().sum() > 0


def test_top_layers_puts_the_ppo_adapter_in_the_last_layers_only(tiny_llama_dir):
    ppo = build_ppo_model(tiny_llama_dir, [], TrainPPOConfig(r=4, alpha=8, top_layers=1))
    adapted = {name.split(".lora_")[0] for name, p in ppo.policy.named_parameters() if p.requires_grad}
    assert adapted == {"base_model.model.model.layers.1.self_attn.q_proj",
                       "base_model.model.model.layers.1.self_attn.v_proj"}


def test_frozen_layers_run_once_per_rollout_and_change_nothing(tiny_model_dir, tmp_path):
    """With the adapter in the top layer only, the layers below (T5: the encoder) run in the rollout's
    first pass; the reference pass and the update start from their cached output with the same logits."""
    sft_dir = save_sft_adapter(tiny_model_dir, tmp_path / "sft")
    ppo = build_ppo_model(tiny_model_dir, [sft_dir], TrainPPOConfig(r=4, alpha=8, top_layers=1))
    randomize_lora_b(ppo.policy, seed=5)
    prompts = render_prompts([row["dialogue"] for row in fixture_rows(3)], ppo, SHORT_BASE)
    torch.manual_seed(0)
    rollout = sample_responses(ppo, prompts, max_new_tokens=6)
    bottom = ppo.policy.get_base_model()
    bottom = bottom.encoder.block[0] if ppo.family.name == "encoder-decoder" else bottom.model.layers[0]
    calls = []
    bottom.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        full_logits, full_values, rollout.frozen = forward_policy(ppo, rollout)
        assert len(calls) == 1 and rollout.frozen is not None
        cached_logits, cached_values, _ = forward_policy(ppo, rollout)
        with ppo.policy.disable_adapter():
            rollout_ref = rollout.select(torch.arange(3))
            cached_ref = forward_policy(ppo, rollout_ref)[0]
            rollout_ref.frozen = None
            full_ref = forward_policy(ppo, rollout_ref)[0]
    assert len(calls) == 2  # the cached passes skipped the bottom layer; the last uncached one ran it
    torch.testing.assert_close(cached_logits, full_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached_values, full_values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached_ref, full_ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(cached_ref, cached_logits, atol=1e-3)  # the adapter acts above the cache


def test_frozen_layers_are_cached_only_where_a_middle_layer_can_take_inputs_embeds():
    from transformers import GPT2Config, LlamaConfig, T5Config

    from detoxsum.models.family import DecoderOnly, EncoderDecoder

    assert DecoderOnly().caches_frozen_layers(LlamaConfig())
    assert not DecoderOnly().caches_frozen_layers(GPT2Config())  # adds position embeddings to inputs_embeds
    assert EncoderDecoder().caches_frozen_layers(T5Config())


def test_greedy_baselines_score_the_reference_greedy_summary_once_per_prompt(tiny_model_dir, tmp_path):
    cfg = TrainPPOConfig(r=4, alpha=8)
    ppo = build_ppo_model(sharpened_copy(tiny_model_dir, tmp_path), [], cfg)  # greedy text moves with the adapter
    prompts = render_prompts(["A: Rain again.\nB: Yes.", "A: Lunch?\nB: Sure.", "A: Late?\nB: No."], ppo,
                             BaseConfig(max_source_tokens=128))
    assert len(set(prompts)) == 3
    greedy = generate_summaries(ppo.policy, ppo.tokenizer, ppo.family, prompts, 3, 6, show_progress=False)
    expected = vowel_count(greedy).tolist()  # policy == reference here
    randomize_lora_b(ppo.policy, seed=5)
    assert generate_summaries(ppo.policy, ppo.tokenizer, ppo.family, prompts, 3, 6, show_progress=False) != greedy
    scored: list[str] = []

    def counting_reward(texts: list[str]) -> torch.Tensor:
        scored.extend(texts)
        return vowel_count(texts)

    baselines = greedy_baselines(ppo, prompts + prompts[:1], counting_reward, max_new_tokens=6, batch_size=2)
    assert baselines == dict(zip(prompts, expected))  # from the reference, not the perturbed adapter
    assert len(scored) == len(prompts)  # the repeated prompt is generated and scored once


def test_collect_rollout_subtracts_each_prompts_baseline_from_its_score(tiny_model_dir):
    cfg = TrainPPOConfig(batch_size=3, minibatch_size=1, max_new_tokens=6)
    ppo = build_ppo_model(tiny_model_dir, [], cfg)
    prompts = render_prompts([row["dialogue"] for row in fixture_rows(3)], ppo, SHORT_BASE)
    baselines = torch.tensor([1.0, -2.0, 0.5])
    torch.manual_seed(0)
    raw, raw_stats = collect_rollout(ppo, prompts, vowel_count, cfg, beta=0.05)
    torch.manual_seed(0)
    shifted, stats = collect_rollout(ppo, prompts, vowel_count, cfg, beta=0.05, baselines=baselines)
    assert torch.equal(shifted.response_ids, raw.response_ids)
    torch.testing.assert_close(shifted.scores, raw.scores - baselines)
    assert stats["reward_mean"] == raw_stats["reward_mean"] == raw_stats["reward_gain_mean"]
    assert stats["reward_gain_mean"] == pytest.approx(raw_stats["reward_mean"] - baselines.mean().item())


def test_leave_one_out_baselines_average_the_other_samples_of_each_prompt():
    scores = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    torch.testing.assert_close(leave_one_out_baselines(scores, 3), torch.tensor([2.5, 2.0, 1.5, 25.0, 20.0, 15.0]))
    torch.testing.assert_close(leave_one_out_baselines(scores, 2), torch.tensor([2.0, 1.0, 10.0, 3.0, 30.0, 20.0]))


def test_prompt_batches_repeat_each_prompt_and_cycle_through_all():
    prompts = [f"p{i}" for i in range(5)]
    batches = prompt_batches(prompts, batch_size=6, seed=0, samples_per_prompt=3)
    seen = [next(batches) for _ in range(5)]
    for batch in seen:
        assert len(batch) == 6 and batch[0] == batch[1] == batch[2] and batch[3] == batch[4] == batch[5]
    distinct = [batch[i] for batch in seen for i in (0, 3)]
    assert sorted(distinct) == sorted(prompts * 2)  # 10 dialogues drawn: each of the 5 twice


def test_collect_rollout_with_leave_one_out_baseline_scores_samples_against_their_siblings(tiny_model_dir):
    _, (raw, _), (relative, stats) = paired_rollouts(tiny_model_dir, vowel_count, 6, reward_baseline="leave_one_out",
                                                    samples_per_prompt=2)
    pairs = raw.scores.view(2, 2)
    torch.testing.assert_close(relative.scores.view(2, 2), pairs - pairs.flip(1))
    assert stats["reward_gain_mean"] == pytest.approx(0.0, abs=1e-6)


def test_ends_at_stop_tells_finished_responses_from_cut_ones():
    stop, pad = 2, 0
    response_ids = torch.tensor([[5, 6, stop, pad], [5, 6, 7, 8], [stop, pad, pad, pad], [5, 6, 7, stop]])
    mask = response_mask(response_ids, [stop])
    assert ends_at_stop(response_ids, mask, [stop]).tolist() == [True, False, True, True]
    assert ends_at_stop(response_ids, mask, [stop, 8]).tolist() == [True, True, True, True]


def test_collect_rollout_gives_unfinished_summaries_the_unfinished_score(tiny_model_dir):
    ppo, (raw, raw_stats), (cut, stats) = paired_rollouts(tiny_model_dir, vowel_count, 3, unfinished_score=-5.0)
    finished = ends_at_stop(raw.response_ids, raw.response_mask, stop_token_ids(ppo.tokenizer))
    assert not finished.all()  # 3 tokens are too few for the tiny model's summaries
    torch.testing.assert_close(cut.scores, torch.where(finished, raw.scores, torch.tensor(-5.0)))
    assert stats["unfinished_fraction"] == raw_stats["unfinished_fraction"] == 1 - finished.float().mean().item()
    assert stats["reward_mean"] == raw_stats["reward_mean"]  # the reward model's own score, logged as it is


def test_collect_rollout_with_prefix_shaping_moves_reward_off_the_last_token_but_keeps_the_sums(tiny_model_dir):
    empty_text_reward = 1.5  # phi_0 = R(""): the sums keep the score less it (a reward of 0 there hid it)
    _, (plain, _), (shaped, _) = paired_rollouts(tiny_model_dir, lambda texts: text_length(texts) + empty_text_reward,
                                                 6, reward_shaping="prefix", reward_baseline="none")
    # policy == reference at the start, so the rewards are the reward model's shares alone
    torch.testing.assert_close(shaped.rewards.sum(1), plain.rewards.sum(1) - empty_text_reward)
    before_last = plain.response_mask.clone()
    before_last[torch.arange(4), plain.response_mask.sum(1).long() - 1] = 0
    assert (plain.rewards * before_last).abs().sum() == 0
    assert (shaped.rewards * before_last).abs().sum() > 0


def test_collect_rollout_without_advantage_whitening_keeps_the_gae_scale(tiny_model_dir):
    _, (whitened, _), (raw, _) = paired_rollouts(tiny_model_dir, text_length, 6, whiten_advantages=False)
    mask = raw.response_mask
    expected, _ = gae_advantages(raw.rewards, raw.values, mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(raw.advantages, expected)
    torch.testing.assert_close(whitened.advantages, masked_whiten(expected, mask) * mask)
    assert not torch.allclose(raw.advantages, whitened.advantages)


def test_saved_adapter_and_value_head_reload_on_top_of_the_sft_adapter(tiny_model_dir, tmp_path):
    cfg = TrainPPOConfig(r=4, alpha=8)
    sft_dir = save_sft_adapter(tiny_model_dir, tmp_path / "sft")
    ppo = build_ppo_model(tiny_model_dir, [sft_dir], cfg)
    randomize_lora_b(ppo.policy, seed=5)
    with torch.no_grad():  # and a trained-looking value head
        ppo.value_head.linear.weight.normal_(generator=torch.Generator().manual_seed(6))
    save_ppo_model(ppo, tmp_path / "ppo")

    reloaded, tokenizer, family = load_with_adapters(tiny_model_dir, [sft_dir, tmp_path / "ppo"])
    prompts = render_prompts([row["dialogue"] for row in fixture_rows(2)], ppo, SHORT_BASE)
    batch = pad_prompts(tokenizer, family, prompts, torch.device("cpu"))
    response_ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    mask = torch.ones(2, 3)
    def response_logits(model):
        return family.forward_response(model, batch["input_ids"], batch["attention_mask"], response_ids, mask)[0]

    with torch.no_grad():
        expected, actual = response_logits(ppo.policy), response_logits(reloaded)
        with ppo.policy.disable_adapter():
            reference = response_logits(ppo.policy)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(actual, reference, atol=1e-3)  # the PPO adapter was applied
    value_head = load_value_head(tmp_path / "ppo", reloaded.config.hidden_size)
    assert torch.equal(value_head.linear.weight, ppo.value_head.linear.weight)


# --- the stage ------------------------------------------------------------------------------------


def test_stage_writes_adapter_metrics_and_curves(tiny_llama_dir, tmp_path, monkeypatch):
    """The real params.yaml, shrunk to two tiny steps, run from a scratch working directory."""
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["base"]["max_source_tokens"] = 48
    params["train_ppo"].update(steps=2, batch_size=4, minibatch_size=2, ppo_epochs=1, max_new_tokens=4)
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(tiny_llama_dir, "artifacts/model")
    save_sft_adapter(Path("artifacts/model"), Path("artifacts/lora"))
    Path("data/filtered").mkdir(parents=True)
    Path("data/filtered/train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in fixture_rows(6)))

    from detoxsum.stages import train_ppo as stage

    stage.main()
    assert Path("artifacts/ppo/adapter_config.json").is_file()
    assert Path("artifacts/ppo/value_head.safetensors").is_file()
    metrics = json.loads(Path("metrics/train_ppo.json").read_text())
    assert metrics["steps"] == 2 and {"reward_mean_first", "reward_mean_last", "kl_last", "runtime_s"} <= set(metrics)
    logged = json.loads(Path("dvclive/train_ppo/metrics.json").read_text())
    assert {"reward_mean", "kl", "entropy", "clip_fraction", "value_loss", "approx_kl", "beta"} <= set(logged)
    load_with_adapters("artifacts/model", ["artifacts/lora", "artifacts/ppo"])


def test_bf16_weight_storage_matches_autocast_over_fp32_weights(tiny_model_dir):
    """Storing frozen linears in bf16 only saves autocast's per-call casts: sampling is identical, and
    the scoring pass differs only by the output layer, which runs in float32 on the stored weights."""
    cfg = TrainPPOConfig(batch_size=4, minibatch_size=2, max_new_tokens=6)
    stored_bf16 = build_ppo_model(tiny_model_dir, [], cfg, precision="bf16")
    cast_per_call = build_ppo_model(tiny_model_dir, [], cfg, precision="fp32")
    cast_per_call.precision = "bf16"  # fp32 weights under autocast
    assert stored_bf16.policy.get_output_embeddings().weight.dtype == torch.bfloat16
    assert stored_bf16.policy.get_input_embeddings().weight.dtype == torch.float32
    prompts = render_prompts([row["dialogue"] for row in fixture_rows(4)], stored_bf16, SHORT_BASE)
    torch.manual_seed(0)
    rollout = sample_responses(stored_bf16, prompts, max_new_tokens=6)
    torch.manual_seed(0)
    assert torch.equal(sample_responses(cast_per_call, prompts, max_new_tokens=6).response_ids, rollout.response_ids)
    with torch.no_grad():
        stored_logits, cast_logits = forward_policy(stored_bf16, rollout)[0], forward_policy(cast_per_call, rollout)[0]
    assert stored_logits.dtype == cast_logits.dtype == torch.float32
    # bf16 weights round to 8 bits of mantissa: logits agree to a few hundredths, not exactly
    torch.testing.assert_close(stored_logits, cast_logits, rtol=0.02, atol=0.05)


def test_float32_output_layer_computes_logits_in_float32_under_autocast(tiny_llama_dir):
    from detoxsum.models.loading import load_model
    from detoxsum.ppo.output_layer import float32_output_layer

    model, _, _ = load_model(tiny_llama_dir)
    head = model.get_output_embeddings()
    hidden = torch.randn(2, 3, model.config.hidden_size) * 30
    exact = torch.nn.functional.linear(hidden, head.weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head(hidden).dtype == torch.bfloat16
        with float32_output_layer(model):
            inside = head(hidden)
        assert head(hidden).dtype == torch.bfloat16  # the class's forward is back
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, exact)


def test_forward_policy_logits_carry_float32_precision_under_bf16(tiny_llama_dir):
    """Under bf16 autocast the output layer still computes in float32 (`float32_output_layer`): a
    bf16 head's logits, cast up afterwards, would all be bf16 values (8 bits of mantissa)."""
    ppo = build_ppo_model(tiny_llama_dir, [], TrainPPOConfig(r=4, alpha=8), precision="bf16")
    prompts = render_prompts([row["dialogue"] for row in fixture_rows(2)], ppo, SHORT_BASE)
    torch.manual_seed(0)
    rollout = sample_responses(ppo, prompts, max_new_tokens=4)
    with torch.no_grad():
        logits, _, _ = forward_policy(ppo, rollout)
    assert logits.dtype == torch.float32
    finer_than_bf16 = (logits != logits.bfloat16().float()).float().mean().item()
    assert finer_than_bf16 > 0.9, finer_than_bf16


def test_rollout_passes_in_minibatch_chunks_match_one_pass(tiny_model_dir):
    """Chunking the scoring passes by minibatch_size (so [B, T, vocab] logits never exist whole)
    changes no log-prob, value or entropy."""
    cfg = TrainPPOConfig(batch_size=4, minibatch_size=2, max_new_tokens=6, top_layers=1)
    ppo = build_ppo_model(tiny_model_dir, [], cfg)
    randomize_lora_b(ppo.policy, seed=5)
    prompts = render_prompts([row["dialogue"] for row in fixture_rows(4)], ppo, SHORT_BASE)
    rollout = sample_responses(ppo, prompts, max_new_tokens=6)
    with torch.no_grad():
        whole = chunked_logprobs(ppo, rollout, chunk_size=4)
        chunked = chunked_logprobs(ppo, rollout, chunk_size=1)
    for one_pass, in_chunks in zip(whole, chunked):
        torch.testing.assert_close(in_chunks, one_pass, rtol=1e-5, atol=1e-5)


def test_hardest_dialogues_keeps_the_lowest_rewarded_in_order():
    dialogues = ["calm", "rude rude", "fine", "rude"]
    reward_fn = lambda texts: -torch.tensor([float(t.count("rude")) for t in texts])  # noqa: E731
    assert hardest_dialogues(dialogues, reward_fn, 2) == ["rude rude", "rude"]
    assert hardest_dialogues(dialogues, reward_fn, None) == dialogues
    assert hardest_dialogues(dialogues, reward_fn, 10) == dialogues


@pytest.mark.parametrize(("reward_shaping", "reward_baseline"), [("prefix", "none"), ("none", "greedy")])
def test_ppo_with_a_trained_reward_scores_each_summary_with_its_own_dialogue(tiny_model_dir, tmp_path,
                                                                              reward_shaping, reward_baseline):
    """`train_ppo.reward.kind: trained`: every scoring pass (rollout, prefixes, greedy baselines,
    hardest dialogues) hands the preference model the dialogue, not the rendered prompt."""
    from reward_fixtures import save_tiny_reward

    from detoxsum.ppo.rollout import DialogueReward, hardest_dialogues
    from detoxsum.scoring.reward_model import TrainedReward

    trained = TrainedReward.load(save_tiny_reward(tmp_path / "reward"))
    seen: list[str] = []

    def recording(texts: list[str], dialogues: list[str]) -> torch.Tensor:
        seen.extend(dialogues)
        return trained.rewards(texts, dialogues)

    reward_fn = DialogueReward(recording)
    dialogues = [row["dialogue"] for row in fixture_rows(8)]
    picked = hardest_dialogues(dialogues, reward_fn, count=4)
    assert len(picked) == 4 and set(seen) <= set(dialogues)
    cfg = TrainPPOConfig(steps=2, batch_size=4, minibatch_size=2, ppo_epochs=1, max_new_tokens=6,
                         reward_shaping=reward_shaping, reward_baseline=reward_baseline)
    ppo = build_ppo_model(tiny_model_dir, [], cfg)
    prompts = render_prompts(picked, ppo, SHORT_BASE)
    reward_fn.dialogue_of.update(zip(prompts, picked))
    seen.clear()

    history = train_ppo(ppo, prompts, reward_fn, cfg, seed=0)

    assert len(history) == 2 and all(math.isfinite(stats["reward_mean"]) for stats in history)
    assert seen and set(seen) <= set(picked)
