"""A tiny BERT reward model and separable toy preference pairs, built in-process (nothing downloaded).

The tokenizer is a word-level one over a fixed vocabulary with BERT's pair template
(`[CLS] a [SEP] b [SEP]`), which is all `reward_model.encode_pair` asks of a tokenizer.
"""

from __future__ import annotations

import random
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast, set_seed

from detoxsum.data.preferences import PreferencePair

TOPICS = ["coffee", "train", "garden"]
FILLER = "person1 person2 asks tells about the and a please thanks sorry friday monday late early".split()
RUDE = ["idiot", "stupid", "jerk", "moron", "loser"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_bert_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: index for index, token in enumerate(SPECIALS + sorted(set(TOPICS + FILLER + RUDE)))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def tiny_bert_reward(seed: int = 0):
    """(model, tokenizer): a 2-layer, 32-wide BERT with a one-output head."""
    set_seed(seed)
    tokenizer = tiny_bert_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, num_labels=1,
                        pad_token_id=tokenizer.pad_token_id, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config), tokenizer


def toy_dialogue(rng: random.Random, topic: str) -> str:
    words = [rng.choice(FILLER) for _ in range(12)] + [topic] * 4
    rng.shuffle(words)
    return " ".join(words)


def toy_pairs(count: int, family: str, seed: int) -> list[PreferencePair]:
    """`polite_vs_rude`: the rejected summary adds an insult; `faithful_vs_off_topic`: it names
    another topic than the dialogue's."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        topic = rng.choice(TOPICS)
        dialogue = toy_dialogue(rng, topic)
        chosen = f"person1 asks person2 about the {topic}"
        if family == "polite_vs_rude":
            rejected = f"{chosen} {rng.choice(RUDE)}"
        else:
            rejected = f"person1 asks person2 about the {rng.choice([t for t in TOPICS if t != topic])}"
        pairs.append(PreferencePair(dialogue, chosen, rejected, family))
    return pairs


def save_tiny_reward(out_dir: Path, max_length: int = 64) -> Path:
    from detoxsum.scoring.reward_model import save_reward_model

    model, tokenizer = tiny_bert_reward()
    save_reward_model(model, tokenizer, max_length, out_dir)
    return out_dir
