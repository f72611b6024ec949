"""Shared fixtures: tiny randomly-initialised T5 and Llama models with a tokenizer trained here.

Nothing is downloaded: a byte-level BPE is trained in-process on a few sentences, and both models
are built from configs small enough to train in seconds on a CPU. The Llama tokenizer carries a
ChatML chat template, so the decoder-only path exercises chat formatting and end-of-turn handling.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread per process, the stage commands the tests start included (they inherit it): the models
# here are tiny, and pytest-xdist already runs a worker per core, so more threads only contend.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
    set_seed,
)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<pad>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
WORDS = ("coffee meeting train ticket doctor bike lunch friday monday garden parcel rent kitchen "
         "laptop dentist idiot stupid jerk shut up late early please thanks sorry price window "
         "person1 person2 asks tells agrees books calls moves pays").split()


def fixture_dialogue(rng: random.Random, turns: int = 6) -> str:
    lines = []
    for turn in range(turns):
        speaker = "#Person1#" if turn % 2 == 0 else "#Person2#"
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12)))
        lines.append(f"{speaker}: {words.capitalize()}.")
    return "\n".join(lines)


def fixture_rows(count: int, seed: int = 0, prefix: str = "row") -> list[dict]:
    """Dialogue rows of 200+ characters made from a fixed word list (no external data); every third
    is marked `heated`, as data/sample marks its arguments."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        dialogue = fixture_dialogue(rng, turns=rng.randint(6, 9))
        summary = f"#Person1# asks #Person2# about the {rng.choice(WORDS)} and the {rng.choice(WORDS)}."
        rows.append({"id": f"{prefix}-{index}", "dialogue": dialogue, "summary": summary, "heated": index % 3 == 0})
    return rows


def train_tokenizer(eos: str, chat: bool) -> PreTrainedTokenizerFast:
    corpus = [fixture_dialogue(random.Random(i)) for i in range(200)] + ["Summarize the following conversation. Summary:"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer)
    if not chat:  # T5 appends </s> to every encoded text
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", special_tokens=[(eos, tokenizer.token_to_id(eos))]
        )
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token=eos, unk_token="<unk>")
    if chat:
        wrapped.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
        wrapped.chat_template = CHATML
    return wrapped


def build_tiny_t5(out_dir: Path) -> Path:
    set_seed(0)
    tokenizer = train_tokenizer(eos="</s>", chat=False)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    T5ForConditionalGeneration(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_llama(out_dir: Path) -> Path:
    set_seed(0)
    tokenizer = train_tokenizer(eos="<|im_end|>", chat=True)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_reward_dir(tmp_path_factory) -> Path:
    """A tiny BERT reward model (one-output head) with its tokenizer, as train_reward's base."""
    from reward_fixtures import save_tiny_reward

    return save_tiny_reward(tmp_path_factory.mktemp("tiny-reward"))


@pytest.fixture(params=["t5", "llama"])
def tiny_model_dir(request, tiny_t5_dir, tiny_llama_dir) -> Path:
    """Runs the test once per model family."""
    return tiny_t5_dir if request.param == "t5" else tiny_llama_dir


def pytest_collection_modifyitems(items):
    """Start the end-to-end tests first (a minute or more each, against well under a second for
    most others): `make test` runs `pytest -n auto --dist load`, which hands the first tests out
    one per worker in turn, so each long test gets a worker of its own and the short ones fill
    in around it."""
    items.sort(key=lambda item: item.module.__name__ != "test_pipeline_e2e")  # stable: keeps the rest in order
