"""The three heavy workloads on a CUDA card, at FLAN-T5-base's and SmolLM2-135M's real shapes.

Per shape (random weights built from a config: the card has no Hub access, and random weights cost
what trained ones do), in bf16 (autocast over fp32 weights, as the pipeline computes):

    generation   evaluate's workload, per prompt a greedy summary and k=4 nucleus samples (top_p 0.9):
                 ours `greedy_and_sampled_summaries` (one pass over each prompt) against the anchor
                 `generate_summaries` then `sample_summaries` (plain generate, num_return_sequences=4);
                 ~250-token prompts, exactly 64 new tokens per row on both sides (min_new_tokens)
    LoRA step    forward + backward + AdamW, peft LoRA r16 on q/v (train_lora's defaults), batch of
                 256-token rows (T5: 256 source + 64 target tokens); benchmarks/precision.py's step
    PPO step     `ppo.train_ppo` with params.yaml's train_ppo settings, as benchmarks/ppo_step.py
                 runs it, on random prompts with a random reward; no early stop, so equal work per step

Prompts are random token ids written as words ("t17 t5 ..."), which a word-level tokenizer maps
back one to one, so the detoxsum functions that take text get prompts of exactly the intended length.
Each timing follows untimed warm-up work (kernel set-up); GPU work is synchronized before the clock
stops. Batch sizes fit the card's free memory unless given (see `default_batch_size`).

    python benchmarks/gpu.py                             # on a CUDA machine, both shapes, a few minutes
    python benchmarks/gpu.py --shapes smollm2-135m --batch-size 32
    python benchmarks/gpu.py --small --device cpu        # tiny shapes in fp32, to try the script out

Prints a markdown table and writes benchmarks/results/gpu/<device name>.json (`--json`).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmarks sit beside this file
from _shapes import REPO, SMALL, SMOLLM2_135M, describe_machine, write_json  # noqa: E402
from ppo_step import TIMINGS  # noqa: E402
from ppo_vs_trl import EOS, PAD, random_prompts  # noqa: E402
from precision import random_batch, synchronize, time_steps, timed  # noqa: E402

from detoxsum.config import TrainLoraConfig, TrainPPOConfig, build_config, load_params  # noqa: E402
from detoxsum.training.lora import attach_lora, lora_targets
from detoxsum.models.decoding import decodes_plainly
from detoxsum.models.family import family_of
from detoxsum.models.generation import (
    generate_summaries, greedy_and_sampled_summaries, sample_summaries,
)
from detoxsum.models.loading import save_model
from detoxsum.ppo import build_ppo_model, train_ppo  # noqa: E402

# google/flan-t5-base config.json; pad 0, eos 1, decoder start 0 as in T5's tokenizer.
FLAN_T5_BASE = dict(d_model=768, d_ff=2048, d_kv=64, num_layers=12, num_decoder_layers=12, num_heads=12,
                    feed_forward_proj="gated-gelu", vocab_size=32128, tie_word_embeddings=False)
TINY_T5 = {**FLAN_T5_BASE, "d_model": 64, "d_ff": 128, "d_kv": 16, "num_layers": 2, "num_decoder_layers": 2,
           "num_heads": 4, "vocab_size": 512}
SHAPES = {"flan-t5-base": (FLAN_T5_BASE, TINY_T5), "smollm2-135m": (SMOLLM2_135M, {**SMALL, "vocab_size": 512})}
SAMPLES, TOP_P = 4, 0.9  # evaluate.toxicity_samples, evaluate.top_p
# (prompt tokens, new tokens, LoRA row tokens, timed steps) of a full run and of --small.
FULL_SIZES, SMALL_SIZES = (250, 64, 256, 3), (24, 8, 32, 1)
MAX_BATCH = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny shapes, seconds: to try the script out")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    parser.add_argument("--batch-size", type=int, help="prompts / rows per batch (default: from free GPU memory)")
    parser.add_argument("--steps", type=int, help="timed LoRA and PPO steps after one warm-up (default 3; --small 1)")
    parser.add_argument("--json", type=Path, help="default: benchmarks/results/gpu/<device name>.json")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu.py: no CUDA device here; this benchmark is for a GPU (--small --device cpu tries it on a CPU)")
    if args.device == "cpu" and not args.small:
        sys.exit("gpu.py: full shapes on a CPU would take hours; this benchmark is for a CUDA GPU (or pass --small)")
    return args


def default_batch_size(device: torch.device, small: bool) -> int:
    """One row per free GiB, rounded down to a power of two, at most MAX_BATCH (an 80 GB card: 64).

    Estimated (not measured) at batch 64: the SmolLM2 LoRA step (64 x 256 tokens) holds ~12 GB of
    bf16 activations plus ~10 GB of logits and their float32 loss; generation's key/value caches
    (64 prompts x 5 rows x ~314 tokens) ~3 GB; PPO less. So half the card stays free for the allocator.
    """
    if small or device.type != "cuda":
        return 2
    free_gib = torch.cuda.mem_get_info(device)[0] / 2**30
    return min(MAX_BATCH, 1 << (max(int(free_gib), 1).bit_length() - 1))


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Word `t<i>` is token i (0 padding, 1 end of sequence, as in T5): random ids round-trip through text."""
    words = {PAD: 0, EOS: 1, **{f"t{index}": index for index in range(2, vocab_size)}}
    backend = Tokenizer(models.WordLevel(words, unk_token=PAD))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, eos_token=EOS)


def random_model(name: str, small: bool):
    """A randomly initialised model of shape `name` (seed 0) and a word tokenizer of its vocabulary."""
    shape = SHAPES[name][small]
    torch.manual_seed(0)
    ids = dict(pad_token_id=0, eos_token_id=1)
    if name == "flan-t5-base":
        model = T5ForConditionalGeneration(T5Config(**shape, **ids, decoder_start_token_id=0))
    else:
        model = LlamaForCausalLM(LlamaConfig(**shape, **ids, bos_token_id=None))
    return model, word_tokenizer(model.config.vocab_size)


def prompt_texts(vocab_size: int, count: int, length: int) -> list[str]:
    """`count` prompts of `length` random ids from 2 up (not padding or end of sequence), as words."""
    return [" ".join(f"t{token}" for token in row) for row in random_prompts(vocab_size, count, length)]


def time_generation(model, tokenizer, sizes: tuple, batch: int, precision: str, device: torch.device) -> dict:
    """Greedy + SAMPLES samples of 2 batches of prompts, ours against the anchor, after one batch each untimed."""
    prompt_tokens, new_tokens = sizes[:2]
    family = family_of(model.config)
    prompts = prompt_texts(model.config.vocab_size, 2 * batch, prompt_tokens)
    model.generation_config.min_new_tokens = new_tokens  # generate falls back to it: equal work on both sides
    settings = dict(batch_size=batch, max_new_tokens=new_tokens, precision=precision, show_progress=False)

    def anchor(texts: list[str]) -> None:
        generate_summaries(model, tokenizer, family, texts, **settings)
        sample_summaries(model, tokenizer, family, texts, samples=SAMPLES, top_p=TOP_P, **settings)

    def ours(texts: list[str]) -> None:
        greedy_and_sampled_summaries(model, tokenizer, family, texts, samples=SAMPLES, top_p=TOP_P, **settings)

    tokens = len(prompts) * (1 + SAMPLES) * new_tokens
    result = {"prompts": len(prompts), "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
              "decodes_plainly": decodes_plainly(model)}
    for side, run in (("anchor", anchor), ("ours", ours)):
        run(prompts[:batch])
        torch.manual_seed(0)
        seconds = timed(lambda: run(prompts), device)
        result[side] = {"seconds": seconds, "prompts_per_s": len(prompts) / seconds, "tokens_per_s": tokens / seconds}
    result["ratio"] = result["ours"]["prompts_per_s"] / result["anchor"]["prompts_per_s"]
    return result


def time_lora_step(model, sizes: tuple, batch: int, precision: str, device: torch.device) -> dict:
    """LoRA forward + backward + AdamW on `batch` random rows (benchmarks/precision.py's step)."""
    cfg = TrainLoraConfig()
    family = family_of(model.config)
    peft_model = attach_lora(model, family, cfg.r, cfg.alpha, cfg.dropout, lora_targets(model, cfg.target_modules))
    peft_model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    data = random_batch(model.config.vocab_size, batch, sizes[2], device)
    if model.config.is_encoder_decoder:
        data["labels"] = data["labels"][:, : sizes[1]].contiguous()  # T5's decoder reads the summary alone
    seconds = statistics.median(time_steps(peft_model, optimizer, data, precision, device, 1, sizes[3]))
    return {"row_tokens": sizes[2], "median_step_s": seconds, "samples_per_s": batch / seconds,
            "lora": f"r={cfg.r} on {'/'.join(lora_targets(model, cfg.target_modules))}"}


def ppo_config(batch: int, sizes: tuple) -> TrainPPOConfig:
    """params.yaml's train_ppo, scaled to `batch` prompts with the same number of minibatches."""
    section = load_params(REPO / "params.yaml").get("train_ppo") or {}
    params = build_config(TrainPPOConfig, section, "train_ppo")
    return build_config(TrainPPOConfig, {
        **section, "steps": 1 + sizes[3], "batch_size": batch,
        "minibatch_size": max(1, batch // params.num_minibatches),
        "max_new_tokens": min(sizes[1], params.max_new_tokens),
        "early_stop_approx_kl": None,  # every step runs all its epochs: equal work to compare
    }, "train_ppo")


def time_ppo_step(model_dir: Path, vocab_size: int, sizes: tuple, batch: int, precision: str,
                  device: torch.device) -> dict:
    """`train_ppo` steps on random prompts; a step's time runs from the end of the step before it."""
    cfg = ppo_config(batch, sizes)
    ppo = build_ppo_model(model_dir, [], cfg, precision).to(device)
    ppo.policy.get_base_model().generation_config.min_new_tokens = cfg.max_new_tokens  # every sample full length
    rewards = torch.Generator().manual_seed(2)
    ends, history = [], []

    def on_step(stats: dict[str, float]) -> None:
        synchronize(device)
        ends.append(time.perf_counter())
        history.append(stats)

    def reward(texts: list[str]) -> torch.Tensor:  # costs nothing: only the PPO step is timed
        return torch.randn(len(texts), generator=rewards)

    train_ppo(ppo, prompt_texts(vocab_size, batch, sizes[0]), reward, cfg, seed=0, on_step=on_step)
    seconds = statistics.median(end - previous for previous, end in zip(ends, ends[1:]))
    split = {key: statistics.median(stats[key] for stats in history[1:]) for key in TIMINGS}
    return {"minibatch_size": cfg.minibatch_size, "ppo_epochs": cfg.ppo_epochs, "top_layers": cfg.top_layers,
            "max_new_tokens": cfg.max_new_tokens, "reward_shaping": cfg.reward_shaping, "median_step_s": seconds,
            "samples_per_s": batch / seconds, "median_split_s": split,
            # below max_new_tokens where a random model writes the padding id (which ends a response)
            "mean_response_length": statistics.mean(stats["response_length"] for stats in history[1:])}


def peak_gib(device: torch.device) -> float | None:
    """Peak memory since the last call (CUDA only): how close the batch came to the card's limit."""
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return round(peak, 2)


def run_shape(name: str, args: argparse.Namespace, batch: int, precision: str, device: torch.device) -> dict:
    sizes = SMALL_SIZES if args.small else FULL_SIZES
    sizes = (*sizes[:3], args.steps or sizes[3])
    model, tokenizer = random_model(name, args.small)
    vocab_size = model.config.vocab_size
    print(f"{name}: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    peak_gib(device)
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as model_dir:
        save_model(model, tokenizer, model_dir)  # build_ppo_model loads from a folder
        generation = time_generation(model.to(device), tokenizer, sizes, batch, precision, device)
        generation["peak_gib"] = peak_gib(device)
        lora = time_lora_step(model, sizes, batch, precision, device)  # the same weights, now with an adapter
        lora["peak_gib"] = peak_gib(device)
        del model
        ppo = time_ppo_step(Path(model_dir), vocab_size, sizes, batch, precision, device)
        ppo["peak_gib"] = peak_gib(device)
    return {"generation": generation, "lora_step": lora, "ppo_step": ppo}


def print_table(results: dict[str, dict], batch: int) -> None:
    def peak(row: dict) -> str:
        return "-" if row["peak_gib"] is None else f"{row['peak_gib']:.1f}"

    print(f"\n| shape | workload | batch | unit | anchor | ours | ours/anchor | peak GiB |\n|{'---|' * 8}")
    for name, row in results.items():
        gen, lora, ppo = row["generation"], row["lora_step"], row["ppo_step"]
        print(f"| {name} | generation, greedy + {SAMPLES} samples | {batch} | prompts/s | "
              f"{gen['anchor']['prompts_per_s']:.2f} | {gen['ours']['prompts_per_s']:.2f} | {gen['ratio']:.2f}x | "
              f"{peak(gen)} |")
        print(f"| {name} | LoRA step ({lora['row_tokens']} tokens) | {batch} | samples/s | | "
              f"{lora['samples_per_s']:.2f} | | {peak(lora)} |")
        print(f"| {name} | PPO step | {batch} | samples/s | | {ppo['samples_per_s']:.2f} | | {peak(ppo)} |")


def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return f"cpu-{torch.backends.cpu.get_cpu_capability()}".lower()
    name = torch.cuda.get_device_name(device)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    precision = "bf16" if device.type == "cuda" else "fp32"  # emulated bf16 on most CPUs is ~47x slower
    batch = args.batch_size or default_batch_size(device, args.small)
    machine = {**describe_machine(device), "transformers": transformers.__version__}
    if device.type == "cuda":
        machine["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    print(f"{machine['machine']}, torch {machine['torch']}, transformers {machine['transformers']}, {precision}, "
          f"batch {batch}{', tiny shapes' if args.small else ''}", flush=True)
    results = {name: run_shape(name, args, batch, precision, device) for name in args.shapes}
    print_table(results, batch)
    slug = device_slug(device) + ("-small" if args.small else "")
    report = {"benchmark": "gpu", "machine": machine, "precision": precision, "small": args.small,
              "batch_size": batch, "samples": SAMPLES, "top_p": TOP_P, "shapes": results}
    write_json(args.json or REPO / "benchmarks" / "results" / "gpu" / f"{slug}.json", report)
    return report


if __name__ == "__main__":
    main()
