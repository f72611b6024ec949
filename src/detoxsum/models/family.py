"""The one seam between the pipeline and the two model families.

`family_of(config)` picks `EncoderDecoder` (T5-like, `config.is_encoder_decoder`) or `DecoderOnly`
(Llama/SmolLM2-like). Each family knows how to turn a prompt into input ids, how to build training
features with the summary as the target, which generated ids are the response, and how to run the
prompt pass and a response's forward pass. Stages ask the family instead of branching on the
architecture.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    PreTrainedTokenizerBase,
)
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutput

from detoxsum.models.cache import roomy_cache
from detoxsum.models.decoding import CausalState, Seq2SeqState
from detoxsum.models.prompts import plain_few_shot
from detoxsum.models.tokens import end_of_turn_id

IGNORE_INDEX = -100  # labels the loss skips (the prompt, padding)

# Decoder-only architectures whose layers sit in `model.layers` and take rotary positions, which
# `DecoderOnly.forward_response` can run from a middle layer up.
ROTARY_LAYER_STACKS = ("llama", "mistral", "qwen2")


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

    def decode_state(self, model, inputs: dict) -> Seq2SeqState:
        """`decoding.decode`'s state for `generate`'s inputs: a padded batch or `prompt_pass`'s."""
        return Seq2SeqState(model, inputs if "encoder_outputs" in inputs else self.prompt_pass(model, inputs))

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

    def decode_state(self, model, inputs: dict) -> CausalState:
        """`decoding.decode`'s state for `generate`'s inputs (a cache in them holds the first positions)."""
        return CausalState(model, inputs)

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
