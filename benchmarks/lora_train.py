"""Samples per second of this project's LoRA training (`detoxsum.training.lora.train_lora`) against a minimal
hand-written loop: is transformers' Trainer costing us speed? The anchor is the hand loop; the goal is
ours/hand >= 0.9x.

Both sides train the same model (one random-weight copy each), on the same tokenized sample
dialogues, with the same LoRA (r, alpha, dropout, q_proj/v_proj), AdamW learning rate, batch size,
precision and number of optimizer steps:

    ours       `train_lora`: Trainer with group_by_length batches, DataCollatorForSeq2Seq, its default
               optimizer (fused AdamW), gradient clipping at 1.0 and its autocast for the precision
               (none for fp16 on a CPU: accelerate runs fp32 there, and the output says so)
    hand loop  peft LoRA, torch AdamW, the same collator and length grouping (transformers'
               LengthGroupedSampler, which Trainer uses), no KV cache (as Trainer sets it),
               `detoxsum.precision.autocast`, loss.backward(), optimizer.step()

Each side runs `--warmup-steps` steps, then `--steps` timed ones, each from the end of the step
before to its own end (data loading and collation included), so the time is training only: for ours
it comes from a Trainer callback, which leaves out Trainer's setup and the evaluation `train_lora`
runs after training (both shown apart, for reference). Samples/s is steps x batch / the total of the
timed steps (a median step is printed too, but steps differ in length by design: length-grouped
batches run from ~200 to ~430 tokens). Because the two sides' batches need not hold the same rows,
the padded tokens per step each side computed are printed too, with tokens/s.

    python benchmarks/lora_train.py                      # SmolLM2-135M shape, random weights, batch 8, 1 + 6 steps
    python benchmarks/lora_train.py --small              # a tiny model, for trying the script out
    python benchmarks/lora_train.py --model-dir artifacts/model   # the fetched model, after `dvc repro`

It prints the machine's facts and a table, and writes benchmarks/results/lora_train.json (`--json`).
Compare runs on an otherwise idle machine: the load average is printed at the top and after each side.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import DataCollatorForSeq2Seq, TrainerCallback, set_seed
from transformers.trainer_pt_utils import LengthGroupedSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _shapes sits beside this file, also when loaded by path
from _shapes import describe_machine, print_machine, sample_rows, smollm2_shaped_model, write_json  # noqa: E402

from detoxsum.config import BaseConfig, TrainLoraConfig, build_config  # noqa: E402
from detoxsum.data.features import tokenize_split
from detoxsum.training.lora import attach_lora, lora_targets, train_lora
from detoxsum.models.family import IGNORE_INDEX, family_of
from detoxsum.models.loading import load_model
from detoxsum.precision import PRECISIONS, autocast, default_device, resolve_for_model  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "lora_train.json"
# Large enough that Trainer neither evaluates nor logs during the timed steps.
NEVER = 10**9


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a tiny Llama instead of the SmolLM2-135M shape")
    parser.add_argument("--model-dir", type=Path, help="a fetched model folder (artifacts/model) instead")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps")
    parser.add_argument("--warmup-steps", type=int, default=1, help="untimed steps first (at least 1)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    if args.warmup_steps < 1 or args.steps < 1:
        parser.error("--warmup-steps and --steps must be at least 1 (timing starts at the end of a warm-up step)")
    return args


def load_benchmark_model(args: argparse.Namespace):
    if args.model_dir:
        model, tokenizer, _family = load_model(args.model_dir)
        return model, tokenizer, str(args.model_dir)
    model, tokenizer = smollm2_shaped_model(args.small)
    return model, tokenizer, "tiny Llama" if args.small else "SmolLM2-135M shape, random weights"


def training_rows(batch_size: int, steps: int) -> list[dict[str, str]]:
    """Sample train rows, repeated if the steps need more, cut to whole batches: every step is a full
    batch and no step wraps into a second epoch (Trainer would reshuffle there, the hand loop not)."""
    rows = sample_rows("train")
    count = max(batch_size * steps, len(rows) // batch_size * batch_size)
    return [rows[index % len(rows)] for index in range(count)]


def tokenized(rows: list[dict[str, str]], tokenizer, family) -> Dataset:
    """Features exactly as the pipeline's tokenize stage makes them (prompt template and token limits
    of `base`'s defaults; labels -100 on the prompt)."""
    base = BaseConfig()
    return tokenize_split(Dataset.from_list(rows), tokenizer, family, base.prompt, base.max_source_tokens,
                          base.max_target_tokens)


class PaddedBatchShapes:
    """[batch, length] of each training forward, read where the token ids enter the embedding."""

    def __init__(self, model):
        self.shapes: list[tuple[int, int]] = []
        self.handle = model.get_input_embeddings().register_forward_pre_hook(self.record)

    def record(self, module, inputs):
        if module.training:  # evaluation forwards run in eval mode
            self.shapes.append(tuple(inputs[0].shape))

    def mean_tokens(self, first: int, count: int) -> float:
        measured = self.shapes[first : first + count]
        return sum(rows * length for rows, length in measured) / len(measured)


class StepEndTimes(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def timed_step_seconds(step_ends: list[float], warmup_steps: int) -> list[float]:
    """Each step after the warm-up, from the end of the step before to its own end."""
    ends = step_ends[warmup_steps - 1 :]
    return [end - previous for previous, end in zip(ends, ends[1:])]


def run_ours(model, tokenizer, train_set, eval_set, cfg, precision, args) -> dict:
    shapes = PaddedBatchShapes(model)
    clock = StepEndTimes()
    set_seed(args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lora-bench-") as work_dir:
        _peft_model, metrics = train_lora(model, tokenizer, family_of(model.config), train_set, eval_set, cfg,
                                          args.seed, precision, Path(work_dir), callbacks=[clock])
    wall = time.perf_counter() - started
    return {
        "step_seconds": timed_step_seconds(clock.times, args.warmup_steps),
        "padded_tokens_per_step": shapes.mean_tokens(args.warmup_steps, args.steps),
        "trainer_train_runtime_s": metrics["train_runtime_s"],
        "train_lora_wall_s": wall,
        "steps_run": metrics["steps"],
    }


def run_hand_loop(model, tokenizer, train_set, cfg, precision, args) -> dict:
    device = default_device()
    shapes = PaddedBatchShapes(model)
    set_seed(args.seed)
    family = family_of(model.config)
    # The adapter train_lora attaches (lora.attach_lora), so both sides train the same parameters.
    peft_model = attach_lora(model.to(device), family, cfg.r, cfg.alpha, cfg.dropout,
                             lora_targets(model, cfg.target_modules))
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # fp16 gradients underflow unscaled
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=IGNORE_INDEX, padding=True)
    # Trainer's own length grouping, so each batch pads about as little as ours does.
    sampler = LengthGroupedSampler(cfg.batch_size, lengths=[len(ids) for ids in train_set["input_ids"]])
    batches = iter(DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collator))
    step_ends = []
    for _step in range(args.warmup_steps + args.steps):
        batch = {key: value.to(device) for key, value in next(batches).items()}
        with autocast(device, precision):
            # No KV cache, as Trainer sets it (use_cache=False): training never reads one back.
            loss = peft_model(**batch, use_cache=False).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step_ends.append(time.perf_counter())
    return {"step_seconds": timed_step_seconds(step_ends, args.warmup_steps),
            "padded_tokens_per_step": shapes.mean_tokens(args.warmup_steps, args.steps)}


def add_rates(result: dict, batch_size: int) -> dict:
    result["load_average_1m_after"] = round(os.getloadavg()[0], 2)  # other processes' share of the cores
    steps = len(result["step_seconds"])
    result["seconds"] = sum(result["step_seconds"])
    result["median_step_s"] = statistics.median(result["step_seconds"])
    result["samples_per_s"] = steps * batch_size / result["seconds"]
    result["tokens_per_s"] = steps * result["padded_tokens_per_step"] / result["seconds"]
    return result


def print_table(ours: dict, hand: dict, batch_size: int, steps: int, warmup: int) -> None:
    print(f"\n{'path':<20} {'steps':>5} {'padded tok/step':>15} {'total s':>8} {'median step s':>13} "
          f"{'samples/s':>9} {'tokens/s':>8} {'load after':>10}")
    for name, row in (("ours (train_lora)", ours), ("hand loop (anchor)", hand)):
        print(f"{name:<20} {steps:>5} {row['padded_tokens_per_step']:>15.0f} {row['seconds']:>8.1f} "
              f"{row['median_step_s']:>13.2f} {row['samples_per_s']:>9.3f} {row['tokens_per_s']:>8.1f} "
              f"{row['load_average_1m_after']:>10.2f}")
    print(f"ours/hand: {ours['samples_per_s'] / hand['samples_per_s']:.2f}x samples/s "
          f"({ours['tokens_per_s'] / hand['tokens_per_s']:.2f}x padded tokens/s); goal >= 0.9x")
    print(f"timed: {steps} steps of batch {batch_size} after {warmup} warm-up step(s), training only; samples/s = "
          f"steps x batch / total s. For reference, ours in full: Trainer's train_runtime "
          f"{ours['trainer_train_runtime_s']:.1f} s ({ours['steps_run']} steps incl. warm-up, and its evaluation at the "
          f"last step), train_lora {ours['train_lora_wall_s']:.1f} s (also LoRA setup and train_lora's own evaluation)")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    model, tokenizer, model_name = load_benchmark_model(args)
    device = default_device()
    facts = describe_machine(device)
    precision = resolve_for_model(args.precision, model.config, device)
    print_machine(facts)
    family = family_of(model.config)
    train_set = tokenized(training_rows(args.batch_size, args.warmup_steps + args.steps), tokenizer, family)
    # One row: train_lora evaluates after training (Trainer at the last step, then train_lora again),
    # outside the timed steps but not outside the run's wall time.
    eval_set = tokenized(sample_rows("validation")[:1], tokenizer, family)
    cfg = build_config(TrainLoraConfig, {"batch_size": args.batch_size, "max_steps": args.warmup_steps + args.steps,
                                         "eval_steps": NEVER, "logging_steps": NEVER}, "train_lora")
    mean_length = sum(map(len, train_set["input_ids"])) / len(train_set)
    print(f"model: {model_name}, {sum(p.numel() for p in model.parameters()):,} parameters; precision "
          f"{args.precision} -> {precision}; batch {args.batch_size}; LoRA r={cfg.r} alpha={cfg.alpha} "
          f"dropout={cfg.dropout} on {lora_targets(model, cfg.target_modules)}; lr {cfg.learning_rate}; "
          f"{len(train_set)} train rows, {mean_length:.0f} tokens each on average")
    hand_model = copy.deepcopy(model)  # before either side adds its adapter: identical starting weights
    ours = add_rates(run_ours(model, tokenizer, train_set, eval_set, cfg, precision, args), args.batch_size)
    print(f"ours: steps of {', '.join(f'{s:.1f}' for s in ours['step_seconds'])} s; now the hand loop",
          flush=True)  # on record even if the run is stopped later
    del model
    hand = add_rates(run_hand_loop(hand_model, tokenizer, train_set, cfg, precision, args), args.batch_size)
    print_table(ours, hand, args.batch_size, args.steps, args.warmup_steps)
    if precision == "fp16" and device.type == "cpu":
        # accelerate enables fp16 autocast only off the CPU (Accelerator.native_amp), so Trainer's steps
        # ran in fp32 while the hand loop's ran in emulated fp16.
        print("not like with like: on a CPU Trainer (accelerate) does not autocast fp16, so ours ran fp32 here "
              "and the hand loop fp16")
    results = {
        "benchmark": "lora_train",
        "machine": facts,
        "model": model_name,
        "precision_requested": args.precision,
        "precision": precision,
        "batch_size": args.batch_size,
        "warmup_steps": args.warmup_steps,
        "timed_steps": args.steps,
        "mean_row_tokens": mean_length,
        "ours": ours,
        "hand_loop": hand,
        "ratio_samples_per_s": ours["samples_per_s"] / hand["samples_per_s"],
    }
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
