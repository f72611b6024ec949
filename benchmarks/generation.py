"""Generation speed: the evaluate workload on the generate stages' path against plain `model.generate`.

The workload is what each generate stage does per test dialogue: one greedy summary and
`evaluate.toxicity_samples` (k) nucleus-sampled ones. The anchor is plain `model.generate`, as the
stages ran it before: a greedy run, then a sampled run with `num_return_sequences=k`, which repeats
every prompt k times before the forward pass, so each prompt is prefilled 1 + k times. The stages'
path (`models.generation.greedy_and_sampled_summaries`) prefills each prompt once, repeats its cache 1 + k
times and decodes the greedy row and the k sampled rows together, drawing the samples among the
nucleus candidates (`decoding.draw_from_nucleus`) and dropping each batch's finished rows
(`decoding.decode`). Both sides use the same merged model (base + LoRA), batch
size, precision and length-sorted batches; they generate the same greedy summaries (the script
checks them), the samples from the same distribution but other random draws, and the time ratio
is the speed-up. Goal: >= 2.5x on a CPU.

    python benchmarks/generation.py                      # after `dvc repro`: artifacts/ + the test split
    python benchmarks/generation.py --rows 20

Prints a table and writes benchmarks/results/generation.json. Run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from detoxsum.config import load_stage_config
from detoxsum.data.sources import read_jsonl_split
from detoxsum.scoring.evaluation import TestSet
from detoxsum.models.adapters import load_with_adapters
from detoxsum.models.generation import length_order, pad_prompts
from detoxsum.models.loading import device
from detoxsum.models.tokens import decode_responses, stop_token_ids
from detoxsum.precision import autocast
from detoxsum.models.summarizer import GenerationSettings, Summarizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model-dir", type=Path, default=Path("artifacts/model"))
    parser.add_argument("--lora-dir", type=Path, default=Path("artifacts/lora"))
    parser.add_argument("--test-file", type=Path, default=Path("data/filtered/test.jsonl"))
    parser.add_argument("--rows", type=int, default=30, help="test dialogues to summarize")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/generation.json"))
    return parser.parse_args(argv)


@torch.no_grad()
def plain_generate(model, tokenizer, family, prompts: list[str], evaluate, decoding: dict,
                   precision: str) -> list[list[str]]:
    """The anchor: `model.generate` as it comes (its own cache and top-p filter), on the same
    length-sorted batches as the stages' path; the decoded responses per prompt."""
    per_prompt = decoding.get("num_return_sequences", 1)
    texts: list[list[str]] = [[] for _ in prompts]
    order = length_order(tokenizer, family, prompts)
    for start in range(0, len(prompts), evaluate.batch_size):
        positions = order[start : start + evaluate.batch_size]
        batch = pad_prompts(tokenizer, family, [prompts[i] for i in positions], model.device)
        with autocast(model.device, precision):
            generated = model.generate(**batch, max_new_tokens=evaluate.max_new_tokens,
                                       eos_token_id=stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                       **decoding)
        decoded = decode_responses(tokenizer, family.response_ids(generated, batch["input_ids"].shape[1]))
        for offset, position in enumerate(positions):
            texts[position] = decoded[offset * per_prompt : (offset + 1) * per_prompt]
    return texts


def timed(run):
    started = time.perf_counter()
    result = run()
    return result, time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    base, evaluate = load_stage_config("base", args.params), load_stage_config("evaluate", args.params)
    samples, top_p = evaluate.toxicity_samples, evaluate.top_p
    dialogues = TestSet.from_split(read_jsonl_split(args.test_file), args.rows).dialogues
    model, tokenizer, family = load_with_adapters(args.model_dir, [args.lora_dir], merge_all=True)
    model.to(device())
    summarizer = Summarizer(model, tokenizer, family, GenerationSettings.from_configs(base, evaluate))
    summarizer.summarize(dialogues[: evaluate.batch_size])  # warm-up, untimed

    prompts = summarizer.prompts(dialogues)

    def anchor():
        greedy = plain_generate(model, tokenizer, family, prompts, evaluate, {"do_sample": False}, summarizer.precision)
        torch.manual_seed(args.seed)
        sampling = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": top_p, "num_return_sequences": samples}
        sampled = plain_generate(model, tokenizer, family, prompts, evaluate, sampling, summarizer.precision)
        return [texts[0] for texts in greedy], sampled

    def ours():
        torch.manual_seed(args.seed)
        return summarizer.summarize_and_sample(dialogues, samples, top_p)

    (anchor_greedy, _), anchor_s = timed(anchor)
    (ours_greedy, _), ours_s = timed(ours)
    result = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "device": str(device()),
        "threads": torch.get_num_threads(), "precision": summarizer.precision, "dialogues": len(dialogues),
        "batch_size": evaluate.batch_size, "max_new_tokens": evaluate.max_new_tokens, "samples": samples,
        "anchor_s": round(anchor_s, 3), "ours_s": round(ours_s, 3),  # tiny test models run in milliseconds
        "ratio": round(anchor_s / ours_s, 2),
        "same_greedy_summaries": sum(a == b for a, b in zip(anchor_greedy, ours_greedy)),
    }
    print(f"{result['device']} ({result['cpu_capability']}, {result['threads']} threads), {result['precision']}, "
          f"{len(dialogues)} dialogues x (greedy + {samples} sampled), batch {evaluate.batch_size}")
    print("| path | seconds | dialogues/s |\n|---|---|---|")
    print(f"| plain generate: greedy, then num_return_sequences={samples} | {anchor_s:.1f} | {len(dialogues) / anchor_s:.2f} |")
    print(f"| generate stages: one prompt pass for both | {ours_s:.1f} | {len(dialogues) / ours_s:.2f} |")
    print(f"| ratio | {result['ratio']}x | greedy summaries equal: {result['same_greedy_summaries']}/{len(dialogues)} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
