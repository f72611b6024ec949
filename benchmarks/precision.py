"""How fast each floating-point precision computes on this machine, and which one `auto` picks here.

Two measurements, each against fp32 as the anchor (ratio = time / fp32's time, so 30x is 30 times
slower than fp32 and 0.5x twice as fast):

    matmul         one matmul of SmolLM2-135M's MLP up-projection for 512 tokens, [512, 576] @ [576, 1536],
                   with both operands in fp32, bf16 and fp16 (fp16 where it runs): median time, GFLOP/s
    training step  forward + backward + AdamW step of the SmolLM2-135M-shaped model (random weights) with
                   the project's LoRA adapter, on 8 x 256 random tokens, under fp32 and under bf16 autocast
                   (`detoxsum.precision.autocast`, as the pipeline trains)

and then what `detoxsum.precision.resolve_precision("auto", ...)` picks on this machine, and why.

On a CPU without native bf16 (no AVX512-BF16, no AMX: AVX2 laptops, CI runners) bf16 is emulated and
runs tens of times slower than fp32, so the slow rows are kept short: matmul repeats fit
`--matmul-budget-s` per precision, and a training step of another precision than fp32 is timed once,
without a warm-up, when its projected time (the fp32 step times that precision's matmul slowdown)
exceeds `--budget-s`; when even one step would, it is timed on fewer tokens that fit the budget, and
fp32 is timed again on those same tokens for its ratio. The output says which rows were shortened.

    python benchmarks/precision.py            # SmolLM2-135M shape, batch 8 x 256
    python benchmarks/precision.py --small    # a tiny model for the training step, for trying it out

It writes benchmarks/results/precision.json (`--json`). Run it on an otherwise idle machine: the load
average is printed at the top.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _shapes sits beside this file, also when loaded by path
from _shapes import describe_machine, print_machine, smollm2_shaped_model, write_json  # noqa: E402

from detoxsum.config import TrainLoraConfig  # noqa: E402
from detoxsum.training.lora import attach_lora, lora_targets
from detoxsum.models.family import family_of
from detoxsum.precision import DTYPES, Machine, autocast, default_device, resolve_precision  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "precision.json"
# [tokens, hidden] @ [hidden, intermediate]: SmolLM2-135M's gate/up projection for 512 tokens.
MATMUL_SHAPE = (512, 576, 1536)
MATMUL_MAX_REPEATS = 50
STEP_PRECISIONS = ("fp32", "bf16")
SHORTEST_SEQUENCE = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a tiny Llama for the training step")
    parser.add_argument("--rows", type=int, default=8, help="training step batch: sequences")
    parser.add_argument("--length", type=int, default=256, help="training step batch: tokens per sequence")
    parser.add_argument("--steps", type=int, default=2, help="timed fp32 training steps, after one warm-up step")
    parser.add_argument("--budget-s", type=float, default=90.0,
                        help="about the most seconds the training steps of each non-fp32 precision may take")
    parser.add_argument("--matmul-budget-s", type=float, default=5.0,
                        help="about the most seconds of matmul repeats per precision")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    return parser.parse_args(argv)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: wait, or the clock stops early
        torch.cuda.synchronize(device)


def timed(run, device: torch.device) -> float:
    started = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - started


# --- matmul ------------------------------------------------------------------------------------


def time_matmul(precision: str, device: torch.device, budget_s: float) -> dict:
    """Median seconds of one [M, K] @ [K, N] product in `precision`, over as many repeats as fit
    `budget_s` after one untimed call (1 to MATMUL_MAX_REPEATS)."""
    m, k, n = MATMUL_SHAPE
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(m, k, generator=generator).to(device, DTYPES[precision])
    right = torch.randn(k, n, generator=generator).to(device, DTYPES[precision])
    try:
        first = timed(lambda: left @ right, device)
    except RuntimeError as error:  # some builds have no fp16 (or bf16) matmul kernel for this device
        return {"precision": precision, "error": str(error).splitlines()[0]}
    repeats = max(1, min(MATMUL_MAX_REPEATS, int(budget_s / first)))
    seconds = statistics.median(timed(lambda: left @ right, device) for _ in range(repeats))
    return {"precision": precision, "repeats": repeats, "median_s": seconds, "gflops": 2 * m * k * n / seconds / 1e9}


def print_matmul_table(rows: list[dict]) -> None:
    m, k, n = MATMUL_SHAPE
    anchor = rows[0]["median_s"]
    print(f"\nmatmul [{m}, {k}] @ [{k}, {n}], both operands in the precision; median of repeats after one untimed call")
    print(f"{'precision':<10} {'repeats':>7} {'median ms':>10} {'GFLOP/s':>8} {'time vs fp32':>13}")
    for row in rows:
        if "error" in row:
            print(f"{row['precision']:<10} does not run here: {row['error']}")
            continue
        ratio = row["median_s"] / anchor
        print(f"{row['precision']:<10} {row['repeats']:>7} {row['median_s'] * 1e3:>10.2f} {row['gflops']:>8.1f} "
              f"{ratio:>12.2f}x{'  (anchor)' if row['precision'] == 'fp32' else ''}")


# --- training step -----------------------------------------------------------------------------


def lora_model(small: bool, device: torch.device):
    """The SmolLM2-shaped model with the pipeline's LoRA adapter (train_lora's defaults), training mode."""
    model, _tokenizer = smollm2_shaped_model(small)
    cfg = TrainLoraConfig()
    targets = lora_targets(model, cfg.target_modules)
    peft_model = attach_lora(model, family_of(model.config), cfg.r, cfg.alpha, cfg.dropout, targets).to(device)
    peft_model.train()
    return peft_model, f"LoRA r={cfg.r} on {'/'.join(targets)}"


def random_batch(vocab_size: int, rows: int, length: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random token ids, every position a target: the step costs what a real batch of that shape does."""
    ids = torch.randint(vocab_size, (rows, length), generator=torch.Generator().manual_seed(0)).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def time_steps(model, optimizer, batch, precision: str, device: torch.device, warmup: int, steps: int) -> list[float]:
    """Seconds of each of `steps` training steps (forward, backward, AdamW) after `warmup` untimed ones."""

    def step() -> None:
        with autocast(device, precision):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = [timed(step, device) for _ in range(warmup + steps)]
    return times[warmup:]


def shrink(rows: int, length: int, fraction: float) -> tuple[int, int]:
    """A batch of about `fraction` of rows x length tokens: fewer rows first, then shorter rows."""
    tokens = rows * length * fraction
    if tokens >= length:
        return int(tokens // length), length
    return 1, max(SHORTEST_SEQUENCE, int(tokens) // SHORTEST_SEQUENCE * SHORTEST_SEQUENCE)


def plan(projected_s: float, rows: int, length: int, steps: int, budget_s: float) -> tuple[int, int, int, int]:
    """(rows, length, warm-up steps, timed steps) that keep a precision's steps near `budget_s`."""
    if (1 + steps) * projected_s <= budget_s:
        return rows, length, 1, steps
    if projected_s <= budget_s:
        return rows, length, 0, 1
    return (*shrink(rows, length, budget_s / projected_s), 0, 1)


def step_row(model, optimizer, precision: str, rows: int, length: int, warmup: int, steps: int,
             device: torch.device) -> dict:
    batch = random_batch(model.config.vocab_size, rows, length, device)
    times = time_steps(model, optimizer, batch, precision, device, warmup, steps)
    return {"precision": precision, "rows": rows, "length": length, "warmup": warmup, "steps": steps,
            "median_s": statistics.median(times)}


def measure_steps(args: argparse.Namespace, device: torch.device, matmul_slowdown: dict[str, float]) -> list[dict]:
    """The fp32 anchor at the full batch, then each other precision as `plan` allows; where it had to
    run on fewer tokens, fp32 on those tokens too, for a ratio of like with like."""
    model, adapter = lora_model(args.small, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=TrainLoraConfig().learning_rate)
    anchor = step_row(model, optimizer, "fp32", args.rows, args.length, 1, args.steps, device)
    anchor["ratio"] = 1.0
    results = [anchor]
    for precision in STEP_PRECISIONS[1:]:
        projected = anchor["median_s"] * matmul_slowdown.get(precision, 1.0)
        rows, length, warmup, steps = plan(projected, args.rows, args.length, args.steps, args.budget_s)
        row = step_row(model, optimizer, precision, rows, length, warmup, steps, device)
        row["projected_full_batch_s"] = projected
        same_tokens_fp32 = anchor
        if (rows, length) != (args.rows, args.length):
            same_tokens_fp32 = step_row(model, optimizer, "fp32", rows, length, 1, args.steps, device)
            row["fp32_same_tokens_s"] = same_tokens_fp32["median_s"]
        row["ratio"] = row["median_s"] / same_tokens_fp32["median_s"]
        results.append(row)
    for row in results:
        row["adapter"] = adapter
    return results


def print_step_table(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\ntraining step: {'tiny Llama' if args.small else 'SmolLM2-135M shape'}, {rows[0]['adapter']}, "
          f"forward + backward + AdamW under autocast; full batch {args.rows} x {args.length} tokens")
    print(f"{'precision':<10} {'batch':>9} {'warm-up':>7} {'steps':>5} {'median s':>9} {'time vs fp32':>13}")
    for row in rows:
        note = "  (anchor)" if row["precision"] == "fp32" else ""
        if "fp32_same_tokens_s" in row:
            note = (f"  vs fp32 on the same {row['rows']} x {row['length']} tokens ({row['fp32_same_tokens_s']:.2f} s); "
                    f"fewer tokens: a full-batch step was projected at ~{row['projected_full_batch_s']:.0f} s "
                    "(fp32 step x matmul slowdown)")
        elif row["precision"] != "fp32" and row["warmup"] == 0:
            note = (f"  one step, no warm-up, as planned from ~{row['projected_full_batch_s']:.0f} s projected "
                    "(fp32 step x matmul slowdown)")
        print(f"{row['precision']:<10} {row['rows']:>4} x {row['length']:<3} {row['warmup']:>6} {row['steps']:>5} "
              f"{row['median_s']:>9.2f} {row['ratio']:>12.2f}x{note}")


# --- what auto picks ---------------------------------------------------------------------------


def auto_reason(machine: Machine) -> str:
    """Why `auto_precision` decides as it does on `machine` (the table in precision.py, in words)."""
    if machine.device_type == "cuda":
        if machine.native_bf16:
            return f"{machine.description} computes bf16 natively (fp32's range, half the memory traffic)"
        return (f"{machine.description} has no bf16: fp16 on tensor cores with loss scaling for decoder-only "
                "models, fp32 for encoder-decoder ones (T5's activations overflow fp16)")
    flags = (f"torch.cpu._is_avx512_bf16_supported() {torch.cpu._is_avx512_bf16_supported()}, "
             f"_is_amx_tile_supported() {torch.cpu._is_amx_tile_supported()}")
    if machine.native_bf16:
        return f"this machine ({machine.description}) has native bf16 dot products ({flags})"
    return f"this machine ({machine.description}) has neither AVX512-BF16 nor AMX tiles ({flags}), so bf16 is emulated"


def print_auto(machine: Machine, matmul_rows: list[dict], step_rows: list[dict]) -> dict:
    decoder_only = resolve_precision("auto", machine, encoder_decoder=False)
    encoder_decoder = resolve_precision("auto", machine, encoder_decoder=True)
    measured = [f"{row['precision']} {kind} {row['ratio']:.2f}x the fp32 time"
                for kind, rows in (("matmul", matmul_rows), ("training step", step_rows))
                for row in rows if row["precision"] != "fp32" and "ratio" in row]
    reason = auto_reason(machine)
    print(f"\nauto picks {decoder_only} here for a decoder-only model (SmolLM2), {encoder_decoder} for an "
          f"encoder-decoder one (T5): {reason}.")
    print(f"measured here: {'; '.join(measured)}")
    return {"decoder_only": decoder_only, "encoder_decoder": encoder_decoder, "reason": reason}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = default_device()
    facts = describe_machine(device)
    print_machine(facts)
    matmul_rows = [time_matmul(precision, device, args.matmul_budget_s) for precision in ("fp32", "bf16", "fp16")]
    for row in matmul_rows:
        if "median_s" in row:
            row["ratio"] = row["median_s"] / matmul_rows[0]["median_s"]
    print_matmul_table(matmul_rows)
    slowdown = {row["precision"]: row["ratio"] for row in matmul_rows if "ratio" in row}
    step_rows = measure_steps(args, device, slowdown)
    print_step_table(step_rows, args)
    auto = print_auto(Machine.current(device), matmul_rows, step_rows)
    results = {"benchmark": "precision", "machine": facts, "matmul_shape": list(MATMUL_SHAPE), "matmul": matmul_rows,
               "training_step": step_rows, "auto": auto}
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
