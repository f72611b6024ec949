"""Where a response ends (end of turn, end of sequence) and its text."""

from __future__ import annotations

import torch
from transformers import (
    PreTrainedTokenizerBase,
)

from detoxsum.errors import ModelLoadError


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
