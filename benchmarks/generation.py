"""Generation speed: `evaluate`'s path against plain `model.generate` on the same prompts.

Both sides summarize the same test dialogues with the same model weights (base + LoRA adapter),
batch size, precision and greedy decoding. The anchor is what a straightforward script does: the
LoRA adapter left live (peft adds two small matmuls per adapted projection for every token) and the
prompts batched in input order (each batch padded to its longest prompt). `evaluate`'s path
(`summarizer.Summarizer`, as the generate stages run it) merges the adapter into the weights and
batches prompts of similar length. Both generate the same number of new tokens per batch, so the
tokens/s ratio is the speed-up. Goal: >= 2x. Each side first runs one untimed batch (kernel set-up).

    python benchmarks/generation.py                      # after `dvc repro`: artifacts/ + the test split
    python benchmarks/generation.py --rows 20 --batch-size 10 --max-new-tokens 48

Prints a table and writes benchmarks/results/generation.json. Run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from detoxsum.config import load_stage_config
from detoxsum.data import read_jsonl_split
from detoxsum.evaluation import TestSet
from detoxsum.modeling import decode_responses, device, fit_dialogue, load_with_adapters, pad_prompts
from detoxsum.precision import autocast, resolve_for_model
from detoxsum.summarizer import GenerationSettings, Summarizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model-dir", type=Path, default=Path("artifacts/model"))
    parser.add_argument("--lora-dir", type=Path, default=Path("artifacts/lora"))
    parser.add_argument("--test-file", type=Path, default=Path("data/filtered/test.jsonl"))
    parser.add_argument("--rows", type=int, default=30, help="test dialogues to summarize")
    parser.add_argument("--batch-size", type=int, default=None, help="default: evaluate.batch_size")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: evaluate.max_new_tokens")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/generation.json"))
    return parser.parse_args(argv)


def plain_generate(model, tokenizer, family, prompts: list[str], batch_size: int, max_new_tokens: int,
                   precision: str) -> tuple[list[str], int]:
    """The anchor: input order, live adapter; every batch runs max_new_tokens (min = max)."""
    texts, tokens = [], 0
    for start in range(0, len(prompts), batch_size):
        batch = pad_prompts(tokenizer, family, prompts[start : start + batch_size], model.device)
        with torch.no_grad(), autocast(model.device, precision):
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                       do_sample=False, pad_token_id=tokenizer.pad_token_id)
        responses = family.response_ids(generated, batch["input_ids"].shape[1])
        tokens += responses.numel()
        texts += decode_responses(tokenizer, responses)
    return texts, tokens


def timed(run):
    started = time.perf_counter()
    result = run()
    return result, time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    base, evaluate = load_stage_config("base", args.params), load_stage_config("evaluate", args.params)
    batch_size = args.batch_size or evaluate.batch_size
    max_new_tokens = args.max_new_tokens or evaluate.max_new_tokens
    dialogues = TestSet.from_split(read_jsonl_split(args.test_file), args.rows).dialogues

    live, tokenizer, family = load_with_adapters(args.model_dir, [args.lora_dir])
    live.to(device())
    precision = resolve_for_model(base.precision, live.config, live.device)
    prompts = [fit_dialogue(tokenizer, family, base.prompt, d, base.max_source_tokens) for d in dialogues]
    plain_generate(live, tokenizer, family, prompts[:batch_size], batch_size, 2, precision)  # warm-up, untimed
    (_, plain_tokens), plain_s = timed(lambda: plain_generate(live, tokenizer, family, prompts, batch_size,
                                                               max_new_tokens, precision))
    del live

    merged, tokenizer, family = load_with_adapters(args.model_dir, [args.lora_dir], merge_all=True)
    merged.to(device())
    settings = GenerationSettings(base.prompt, base.max_source_tokens, max_new_tokens, batch_size, 1, base.precision)
    summarizer = Summarizer(merged, tokenizer, family, settings)
    # Same work as the anchor: every batch generates max_new_tokens, however early its summaries end.
    summarizer.summarize(dialogues[:batch_size])  # warm-up, untimed (before min_new_tokens: it may stop early)
    merged.generation_config.min_new_tokens = max_new_tokens
    _, ours_s = timed(lambda: summarizer.summarize(dialogues))
    ours_tokens = len(dialogues) * max_new_tokens

    result = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "device": str(device()),
        "threads": torch.get_num_threads(), "precision": precision, "dialogues": len(dialogues),
        "batch_size": batch_size, "max_new_tokens": max_new_tokens,
        "plain_tokens_per_s": round(plain_tokens / plain_s, 1), "ours_tokens_per_s": round(ours_tokens / ours_s, 1),
    }
    result["ratio"] = round(result["ours_tokens_per_s"] / result["plain_tokens_per_s"], 2)
    print(f"{result['device']} ({result['cpu_capability']}, {result['threads']} threads), {precision}, "
          f"{len(dialogues)} dialogues, batch {batch_size}, {max_new_tokens} new tokens each")
    print("| path | tokens/s |\n|---|---|")
    print(f"| plain generate (live adapter, input order) | {result['plain_tokens_per_s']} |")
    print(f"| evaluate (merged adapter, length-sorted batches) | {result['ours_tokens_per_s']} |")
    print(f"| ratio | {result['ratio']}x |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
