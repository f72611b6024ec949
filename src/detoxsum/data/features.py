"""Training features: prompt and summary token ids of a split, per model family."""

from __future__ import annotations

from datasets import Dataset


def tokenize_split(split: Dataset, tokenizer, family, template: str, max_source_tokens: int,
                   max_target_tokens: int) -> Dataset:
    """Prompt + target features for training (labels are -100 wherever the loss must not look)."""
    from detoxsum.models.prompts import fit_dialogue

    def encode(row):
        prompt = fit_dialogue(tokenizer, family, template, row["dialogue"], max_source_tokens)
        return family.training_features(tokenizer, prompt, row["summary"], max_target_tokens)

    return split.map(encode, remove_columns=split.column_names, desc="tokenize")
