"""Batched generation: greedy and nucleus-sampled summaries, prompts sorted by length, one prompt
pass shared by a prompt's rows, a key/value cache that grows in place, and decoding that drops a
batch's finished rows (`decoding.decode`)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
)

from detoxsum.models.cache import roomy_cache, with_roomy_cache
from detoxsum.models.decoding import Uniforms, decode, decodes_plainly, draw_from_nucleus
from detoxsum.models.family import Family
from detoxsum.models.tokens import decode_responses, stop_token_ids
from detoxsum.precision import autocast


def generate_summaries(
    model,
    tokenizer,
    family: Family,
    prompts: list[str],
    batch_size: int,
    max_new_tokens: int,
    num_beams: int = 1,
    precision: str = "fp32",
    desc: str = "generate",
    show_progress: bool = True,
    share_prefix: bool = False,
) -> list[str]:
    """Greedy/beam generation in batches; returns the decoded responses, cut at the end of turn, in
    the order of `prompts`. With `share_prefix` (for prompts that begin alike, such as few-shot ones
    led by the same examples), each batch runs the beginning its prompts share once
    (`shared_prefix_inputs`), where the family and model allow it."""
    decoding = {"num_beams": num_beams, "do_sample": False}
    # Beam search repeats its inputs per beam but not a cache handed in: one pass per prompt there.
    share_prefix = share_prefix and num_beams == 1 and family.shares_prompt_prefix and decodes_plainly(model)
    per_prompt = generate_in_length_order(model, tokenizer, family, prompts, batch_size, max_new_tokens, decoding,
                                          precision, desc, show_progress, share_prefix)
    return [texts[0] for texts in per_prompt]


class NucleusRows(LogitsProcessor):
    """Nucleus sampling at temperature 1 as a logits processor of greedy `generate`: each sampled
    row's scores become -inf but for the token `draw_from_nucleus` drew, which greedy then picks;
    rows outside `sampled` (a bool per row; None: all rows sampled) stay greedy.

    Used where `generate` decodes (beam search aside: models `decoding.decode` leaves to it). Why
    not generate's own sampling: it cannot mix greedy and sampled rows in one batch (greedy
    summaries would decode apart, at a fifth of the rows), and it draws through `torch.multinomial`
    over the whole vocabulary, one exponential variate per token and row: 54 ms a step for 40 rows
    of SmolLM2's 49,152 tokens on a 2-core CPU, where this draws among the nucleus candidates.
    Draws come from `decoding.Uniforms` seeded by `seed`, one per sampled row and step, so a
    batch's samples are those `decoding.decode` draws for the same seed.
    """

    def __init__(self, top_p: float, seed: int, sampled: torch.Tensor | None = None):
        self.top_p, self.seed, self.sampled = top_p, seed, sampled
        self.uniforms: Uniforms | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        rows = torch.ones(scores.shape[0], dtype=torch.bool, device=scores.device) if self.sampled is None \
            else self.sampled.to(scores.device)
        if self.uniforms is None:
            self.uniforms = Uniforms(self.seed, int(rows.sum()), scores.device)
        drawn = draw_from_nucleus(scores[rows], self.top_p, self.uniforms.next())
        chosen = torch.full_like(scores[rows], -float("inf")).scatter_(1, drawn[:, None], 0.0)
        processed = scores.clone()
        processed[rows] = chosen
        return processed


def batch_seed() -> int:
    """A seed for one batch's nucleus draws (`NucleusRows`, `decoding.decode`), from torch's global
    generator (seed torch to reproduce)."""
    return int(torch.randint(2**62, (1,)))


def nucleus_sampling(top_p: float, sampled: torch.Tensor | None = None) -> dict:
    """Greedy generate's settings that sample the `sampled` rows (all: None) by nucleus sampling at
    temperature 1 (`NucleusRows`), seeded from torch's generator."""
    return {"do_sample": False, "logits_processor": LogitsProcessorList([NucleusRows(top_p, batch_seed(), sampled)])}


def sample_summaries(model, tokenizer, family: Family, prompts: list[str], batch_size: int, max_new_tokens: int,
                     samples: int, top_p: float, precision: str = "fp32", desc: str = "sample",
                     show_progress: bool = True) -> list[list[str]]:
    """`samples` summaries per prompt by nucleus sampling at temperature 1 (seed torch first for
    reproducible samples); `batch_size` prompts per batch, each batch `batch_size * samples` rows."""
    decoding = {"rows_per_prompt": samples, "top_p": top_p}
    return generate_in_length_order(model, tokenizer, family, prompts, batch_size, max_new_tokens, decoding,
                                    precision, desc, show_progress)


@torch.no_grad()
def generate_in_length_order(model, tokenizer, family: Family, prompts: list[str], batch_size: int,
                             max_new_tokens: int, decoding: dict, precision: str, desc: str,
                             show_progress: bool, share_prefix: bool = False) -> list[list[str]]:
    """The decoded responses of `model.generate(**decoding)` per prompt, in the order of `prompts`;
    with `top_p` in `decoding`, `rows_per_prompt` nucleus samples of each (`batch_decoding`).

    Prompts are generated longest first, in batches of similar length: a batch pads to its longest
    prompt, so sorting cuts the padded positions every generated token attends to (and the padding
    rows a batch keeps running after its short summaries are done matter less).
    """
    model.eval()
    per_prompt = decoding.get("rows_per_prompt", 1)
    plain = decoding.get("num_beams", 1) == 1 and decodes_plainly(model)
    order = length_order(tokenizer, family, prompts)
    summaries: list[list[str]] = [[] for _ in prompts]
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch", disable=not show_progress):
        positions = order[start : start + batch_size]
        with autocast(model.device, precision):
            batch = shared_prefix_inputs(model, tokenizer, family, [prompts[i] for i in positions]) if share_prefix else None
            if batch is None:
                batch = pad_prompts(tokenizer, family, [prompts[i] for i in positions for _ in range(per_prompt)],
                                    model.device)
                batch = with_roomy_cache(model, batch) if decoding.get("num_beams", 1) == 1 else batch
            if plain:
                responses = decode_batch(model, tokenizer, family, batch, max_new_tokens, decoding.get("top_p"))
            else:
                generated = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                           eos_token_id=stop_token_ids(tokenizer), **batch_decoding(decoding))
                responses = family.response_ids(generated, batch["input_ids"].shape[1])
        texts = decode_responses(tokenizer, responses)
        for offset, position in enumerate(positions):
            summaries[position] = texts[offset * per_prompt : (offset + 1) * per_prompt]
    return summaries


def decode_batch(model, tokenizer, family: Family, batch: dict, max_new_tokens: int, top_p: float | None,
                 sampled: torch.Tensor | None = None) -> torch.Tensor:
    """`decoding.decode`'s response ids for `generate`'s inputs `batch`: greedy, or with `top_p` a
    nucleus sample in every row (or in the `sampled` rows), seeded for this batch (`batch_seed`)."""
    if top_p is not None and sampled is None:
        sampled = torch.ones(len(batch["attention_mask"]), dtype=torch.bool)
    seed = batch_seed() if top_p is not None else 0
    return decode(model, family.decode_state(model, batch), max_new_tokens, stop_token_ids(tokenizer),
                  tokenizer.pad_token_id, sampled, top_p or 1.0, seed)


def batch_decoding(decoding: dict) -> dict:
    """generate's settings for one batch: `decoding`, its `top_p` (if any) turned into a
    `nucleus_sampling` processor seeded for this batch (`rows_per_prompt` is the caller's)."""
    rest = {key: value for key, value in decoding.items() if key not in ("top_p", "rows_per_prompt")}
    return {**rest, **nucleus_sampling(decoding["top_p"])} if "top_p" in decoding else rest


@torch.no_grad()
def greedy_and_sampled_summaries(model, tokenizer, family: Family, prompts: list[str], batch_size: int,
                                 max_new_tokens: int, samples: int, top_p: float, precision: str = "fp32",
                                 desc: str = "generate", show_progress: bool = True
                                 ) -> tuple[list[str], list[list[str]]]:
    """Per prompt its greedy summary and `samples` nucleus-sampled ones (temperature 1), from one
    pass over the prompt and one decoding run.

    On a CPU the prompt's forward pass (prefill) was most of generation's work, and generating the
    greedy summary and the samples apart ran it 1 + `samples` times per prompt (`num_return_sequences`
    repeats the prompt before the pass). Here each batch runs it once (T5: the encoder; decoder-only:
    the key/value cache, `Family.prompt_pass`), repeats it 1 + `samples` times per prompt, and
    decodes all rows together: the first of each prompt greedy, the others nucleus-sampled,
    so the greedy rows do not decode apart at a fifth of the rows. The greedy summaries are those
    of `generate_summaries`, the samples those of `sample_summaries` with the same generator state
    (seed torch first). Decoding is `decoding.decode`'s, which drops the rows that have finished; a
    model it leaves to `generate` (`decoding.decodes_plainly`) gets those two runs.
    """
    if not decodes_plainly(model):
        greedy = generate_summaries(model, tokenizer, family, prompts, batch_size, max_new_tokens, 1, precision,
                                    f"{desc} greedy", show_progress)
        return greedy, sample_summaries(model, tokenizer, family, prompts, batch_size, max_new_tokens, samples,
                                        top_p, precision, f"{desc} sampled x{samples}", show_progress)
    model.eval()
    rows_per_prompt = 1 + samples
    order = length_order(tokenizer, family, prompts)
    greedy: list[str] = [""] * len(prompts)
    sampled: list[list[str]] = [[] for _ in prompts]
    for start in tqdm(range(0, len(prompts), batch_size), desc=f"{desc} greedy + sampled x{samples}",
                      unit="batch", disable=not show_progress):
        positions = order[start : start + batch_size]
        batch = pad_prompts(tokenizer, family, [prompts[i] for i in positions], model.device)
        sampled_rows = (torch.arange(len(positions) * rows_per_prompt) % rows_per_prompt) > 0
        with autocast(model.device, precision):
            rows = family.repeat_prompt_pass(family.prompt_pass(model, batch), rows_per_prompt)
            responses = decode_batch(model, tokenizer, family, rows, max_new_tokens, top_p, sampled_rows)
        texts = decode_responses(tokenizer, responses)
        for offset, position in enumerate(positions):
            first = offset * rows_per_prompt
            greedy[position] = texts[first]
            sampled[position] = texts[first + 1 : first + rows_per_prompt]
    return greedy, sampled


def length_order(tokenizer, family: Family, prompts: list[str]) -> list[int]:
    """Indices of `prompts`, longest (in tokens) first; ties keep their input order."""
    lengths = [len(family.prompt_ids(tokenizer, text)) for text in prompts]
    return sorted(range(len(prompts)), key=lambda index: -lengths[index])


# The fewest tokens worth a pass of their own: below this, running a shared beginning apart saves less
# than the extra forward call costs.
MIN_SHARED_PREFIX = 32


def common_prefix_length(sequences: list[list[int]]) -> int:
    """How many leading tokens every sequence shares."""
    length = 0
    for column in zip(*sequences):
        if any(token != column[0] for token in column):
            break
        length += 1
    return length


def shared_prefix_inputs(model, tokenizer, family: Family, prompts: list[str]) -> dict | None:
    """`generate`'s inputs for decoder-only `prompts` that begin with the same tokens: the common
    beginning runs once, as a batch of one, and its key/value cache is repeated for every prompt;
    each prompt's rest follows it, padded between the two (attention masks out the padding and
    position ids count only real tokens, so every token sits where it would unpadded). None for a
    single prompt, or prompts that share fewer than MIN_SHARED_PREFIX tokens.

    Few-shot prompts are the case: the same solved examples lead every dialogue, up to ~750 of a
    3-shot prompt's ~1,000 tokens, and each batch otherwise runs them once per prompt.
    """
    ids = [family.prompt_ids(tokenizer, text) for text in prompts]
    shared = min(common_prefix_length(ids), min(len(row) for row in ids) - 1)  # generate needs a token to start
    if len(ids) < 2 or shared < MIN_SHARED_PREFIX:
        return None
    device_ = model.device
    prefix = torch.tensor([ids[0][:shared]], device=device_)
    only_last = {"logits_to_keep": 1} if model._supports_logits_to_keep() else {}  # no logits are needed
    cache = model(input_ids=prefix, past_key_values=roomy_cache(model), use_cache=True, **only_last).past_key_values
    cache.batch_repeat_interleave(len(ids))
    rests = [row[shared:] for row in ids]
    width = max(len(rest) for rest in rests)
    padded = [ids[0][:shared] + [tokenizer.pad_token_id] * (width - len(rest)) + rest for rest in rests]
    mask = [[1] * shared + [0] * (width - len(rest)) + [1] * len(rest) for rest in rests]
    return {"input_ids": torch.tensor(padded, device=device_), "attention_mask": torch.tensor(mask, device=device_),
            "past_key_values": cache}


def pad_prompts(tokenizer, family: Family, prompts: list[str], device_: torch.device) -> dict[str, torch.Tensor]:
    """Tokenize prompts and left-pad them, so every response starts at the same position."""
    features = [{"input_ids": family.prompt_ids(tokenizer, text)} for text in prompts]
    batch = tokenizer.pad(features, padding=True, padding_side="left", return_tensors="pt")
    return {key: value.to(device_) for key, value in batch.items()}
