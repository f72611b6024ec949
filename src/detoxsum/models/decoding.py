"""Greedy and nucleus decoding that drops finished rows from the batch.

Why not `model.generate`: it keeps every row of a batch in every step until the last one ends, and
with ten prompts of five rows each (a greedy summary and four samples) the longest of fifty
summaries sets the batch's length. SmolLM2's summaries of the test split average 44 of their 64
allowed tokens, and a decoding step costs about the same per row from 25 rows up on a 2-core CPU,
so about a third of the steps' work went to rows already done. Here a finished row leaves the batch
(its cache rows with it) once a quarter of the live rows have finished: leaving copies the cache,
so rows leave in a few groups, not one at a time.

What `generate` does besides, for the settings the pipeline uses, is kept: greedy rows take the
arg max of the logits, sampled rows draw from the nucleus at temperature 1 (`draw_from_nucleus`),
a row ends at its first stop token, and positions count only a prompt's real tokens. A model whose
generation config asks for other logits processors (a repetition penalty, a minimum length...) is
left to `generate` (`decodes_plainly`), as is a live peft model (a soft prompt enters inside
peft's own generate) and a cache that cannot drop rows (sliding-window or static caches).
"""

from __future__ import annotations

import sys

import torch
from transformers import GenerationConfig
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from detoxsum.models.cache import roomy_cache

# Finished rows leave the batch once they are this share of the live rows.
LEAVE_SHARE = 0.25

# Generation-config settings that `generate` turns into logits processors this loop does not apply.
PROCESSOR_SETTINGS = ("repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size",
                      "encoder_no_repeat_ngram_size", "bad_words_ids", "min_length", "min_new_tokens",
                      "forced_bos_token_id", "forced_eos_token_id", "suppress_tokens", "begin_suppress_tokens",
                      "sequence_bias", "exponential_decay_length_penalty", "renormalize_logits")


def draw_from_nucleus(logits: torch.Tensor, top_p: float, uniforms: torch.Tensor,
                      candidates: int = 1024) -> torch.Tensor:
    """One token per row of `logits` [rows, vocab] by nucleus (top-p) sampling at temperature 1:
    from the most likely tokens whose more likely neighbours hold less than `top_p` of the
    probability (always the most likely one), as transformers' `TopPLogitsWarper` keeps them, each
    in proportion to its probability. Row i's token is where `uniforms[i]` (in [0, 1)) falls in
    the nucleus's cumulative probability, so a row's draw depends on its own uniform alone.

    Only the `candidates` largest logits of a row are sorted; a row whose nucleus reaches past them
    (a very flat distribution) is drawn again over its whole vocabulary.
    """
    top_logits, top_ids = logits.topk(min(candidates, logits.shape[-1]), dim=-1)
    probs = (top_logits - torch.logsumexp(logits, dim=-1, keepdim=True)).exp()
    keep = probs.cumsum(dim=-1) - probs < top_p  # the mass of the more likely tokens
    keep[:, 0] = True
    cumulative = (probs * keep).cumsum(dim=-1)
    target = uniforms.to(cumulative)[:, None] * cumulative[:, -1:]
    index = torch.searchsorted(cumulative, target, right=True).clamp(max=cumulative.shape[-1] - 1)
    tokens = top_ids.gather(1, index).squeeze(1)
    overflow = keep[:, -1] & (top_ids.shape[-1] < logits.shape[-1])
    if overflow.any():
        tokens[overflow] = draw_from_nucleus(logits[overflow], top_p, uniforms[overflow], logits.shape[-1])
    return tokens


class Uniforms:
    """One uniform per sampled row and step, from a generator seeded by `seed`: every step draws
    for all `rows` sampled rows of the batch, finished or not, so a row's draws do not depend on
    when the others finish."""

    def __init__(self, seed: int, rows: int, device: torch.device):
        self.rows, self.generator = rows, torch.Generator(device).manual_seed(seed)

    def next(self) -> torch.Tensor:
        return torch.rand(self.rows, generator=self.generator, device=self.generator.device)


def decodes_plainly(model) -> bool:
    """Whether `decode` can stand in for `model.generate`: no live peft model, a cache whose rows can
    be dropped, and no logits processors in the model's generation config."""
    config = getattr(model, "generation_config", None)
    if is_peft_model(model) or config is None or config.cache_implementation is not None:
        return False
    default = GenerationConfig()
    return all(getattr(config, key, None) == getattr(default, key, None) for key in PROCESSOR_SETTINGS)


def is_peft_model(model) -> bool:
    """Whether `model` is a live peft model. Without peft imported it cannot be one: the base model's
    generate stage merges no adapter and so never pays peft's import (~2 s with bitsandbytes)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


@torch.no_grad()
def decode(model, state, max_new_tokens: int, stop_ids: list[int], pad_id: int,
           sampled: torch.Tensor | None = None, top_p: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Response ids [rows, <= max_new_tokens] from a decoding `state` (`CausalState`,
    `Seq2SeqState`): each row up to and including its first stop token, `pad_id` after it. Rows
    where `sampled` (bool per row; None: none) is true draw from the nucleus of `top_p`, with one
    uniform per row and step from a generator seeded by `seed`; the others are greedy."""
    rows = state.rows
    device_ = state.device
    sampled = torch.zeros(rows, dtype=torch.bool) if sampled is None else sampled.cpu()
    uniforms = Uniforms(seed, int(sampled.sum()), device_) if sampled.any() else None
    sample_slot = (sampled.long().cumsum(0) - 1).to(device_)  # a sampled row's place among the uniforms
    sampled = sampled.to(device_)
    stops = torch.tensor(stop_ids, device=device_)
    responses = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device_)
    live = torch.arange(rows, device=device_)  # the batch's rows, by their index in `responses`
    finished = torch.zeros(rows, dtype=torch.bool, device=device_)
    steps = 0
    for step in range(max_new_tokens):
        logits = state.next_logits(model)
        tokens = next_tokens(logits, sampled[live], sample_slot[live], uniforms, top_p)
        tokens = tokens.masked_fill(finished, pad_id)
        responses[live, step] = tokens
        finished |= torch.isin(tokens, stops)
        steps = step + 1
        if finished.all():
            break
        state.append(tokens)
        if finished.sum() >= LEAVE_SHARE * len(live):
            keep = (~finished).nonzero().squeeze(1)
            state.keep_rows(keep)
            live, finished = live[keep], finished[keep]
    return responses[:, :steps]


def next_tokens(logits: torch.Tensor, sampled: torch.Tensor, slots: torch.Tensor, uniforms: Uniforms | None,
                top_p: float) -> torch.Tensor:
    """The live rows' next tokens: arg max, or a nucleus draw for the `sampled` ones (each with the
    uniform of its `slots` entry; the step's uniforms are drawn even when no sampled row is live)."""
    tokens = logits.argmax(dim=-1)
    if uniforms is not None:
        step_uniforms = uniforms.next()
        if sampled.any():
            tokens[sampled] = draw_from_nucleus(logits[sampled], top_p, step_uniforms[slots[sampled]])
    return tokens


class CausalState:
    """Decoding state of a decoder-only model: its key/value cache, the attention mask over every
    position so far, and the tokens not yet run through the model. `inputs` are `generate`'s:
    left-padded `input_ids` and `attention_mask`, and optionally a cache holding the first positions
    (`DecoderOnly.prompt_pass`, `shared_prefix_inputs`)."""

    def __init__(self, model, inputs: dict):
        self.cache = inputs.get("past_key_values") or roomy_cache(model) or DynamicCache(config=model.config)
        self.mask = inputs["attention_mask"]
        self.pending = inputs["input_ids"][:, self.cache.get_seq_length():]
        self.rows, self.device = self.pending.shape[0], self.pending.device
        self.only_last = {"logits_to_keep": 1} if model._supports_logits_to_keep() else {}

    def next_logits(self, model) -> torch.Tensor:
        # Positions count only real tokens, as generate's own do (padding sits left or mid-prompt).
        positions = (self.mask.long().cumsum(-1) - 1).masked_fill(self.mask == 0, 1)[:, -self.pending.shape[1]:]
        out = model(input_ids=self.pending, attention_mask=self.mask, position_ids=positions,
                    past_key_values=self.cache, use_cache=True, **self.only_last)
        return out.logits[:, -1].float()

    def append(self, tokens: torch.Tensor) -> None:
        self.pending = tokens[:, None]
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=1)

    def keep_rows(self, keep: torch.Tensor) -> None:
        self.cache.batch_select_indices(keep)
        self.mask, self.pending = self.mask[keep], self.pending[keep]


class Seq2SeqState:
    """Decoding state of an encoder-decoder model: the encoder's output and mask (`prompt_pass`'s
    inputs) and the decoder's cache, starting from the decoder start token."""

    def __init__(self, model, inputs: dict):
        self.encoded = inputs["encoder_outputs"].last_hidden_state
        self.mask = inputs["attention_mask"]
        self.rows, self.device = self.encoded.shape[0], self.encoded.device
        self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        self.pending = torch.full((self.rows, 1), model.config.decoder_start_token_id, device=self.device)

    def next_logits(self, model) -> torch.Tensor:
        out = model(encoder_outputs=BaseModelOutput(last_hidden_state=self.encoded), attention_mask=self.mask,
                    decoder_input_ids=self.pending, past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1].float()

    def append(self, tokens: torch.Tensor) -> None:
        self.pending = tokens[:, None]

    def keep_rows(self, keep: torch.Tensor) -> None:
        self.cache.batch_select_indices(keep)
        self.encoded, self.mask, self.pending = self.encoded[keep], self.mask[keep], self.pending[keep]
