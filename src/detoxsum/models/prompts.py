"""Prompts: the dialogue put into `base.prompt`, cut to the token budget, and few-shot examples
before it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # family.py builds few-shot prompts with plain_few_shot below
    from detoxsum.models.family import Family

# Between solved examples of a few-shot prompt written as plain text (as the FLAN-T5 DialogSum course does).
EXAMPLE_SEPARATOR = "\n\n\n"


def plain_few_shot(user_prompt: str, examples: Sequence[tuple[str, str]]) -> str:
    """`user_prompt` led by solved examples written out as text: each example's prompt, its summary
    after it (the prompt ends on `Summary:`), then the next."""
    return EXAMPLE_SEPARATOR.join([f"{prompt} {summary}" for prompt, summary in examples] + [user_prompt])


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
