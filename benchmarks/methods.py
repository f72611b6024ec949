"""The tuning methods side by side (`train_lora.method`): ROUGE-1/ROUGE-L of greedy summaries of the
test split, trainable parameters and train_lora's wall time, per method, on one machine.

Each method goes through the code the pipeline runs: `load_for_training` + `train_lora` +
`save_trained` with the project's `base` and `train_lora` params, except `method` and `lr`: each
method trains at its own default rate (config.METHOD_LR; one rate for all of them with `--lr`), then the saved result is loaded back the way
`generate_lora` loads artifacts/lora (`load_with_adapters`, adapters merged) and summarizes the test
dialogues greedily with `evaluate`'s decoding settings. The wall time is train_lora's from loading
the base to the final evaluation (what the stage costs); `train_s` is Trainer's training loop alone.
A row `base` (no tuning) is the zero-shot reference; `--shots 1,3` adds the prompt baselines, the
base model with 1 and 3 solved training examples before each dialogue, drawn and fitted as
`generate_base` does (`evaluate.shots`, `evaluate.few_shot_max_source_tokens`). Where bitsandbytes has no 4-bit kernels, qlora's
row says so instead of failing the run.

It reads a workspace the pipeline has run in up to `tokenize` (`artifacts/model`, `data/tokenized`,
`data/filtered/test.jsonl`, `params.yaml`) and writes nothing there: adapters and checkpoints go to a
temporary folder.

    python benchmarks/methods.py --project /path/to/workspace          # every method, the whole sample data
    python benchmarks/methods.py --project .          # a quick try: one step, a summary of 8 tokens
        --train-rows 8 --eval-rows 2 --test-rows 1 --max-steps 1 --max-new-tokens 8

It prints a table and writes benchmarks/results/methods.json (`--json`). On 2 shared CPU cores the
full run on data/sample takes tens of minutes (full fine-tuning and QLoRA's CPU dequantization are the
slow rows); compare methods from one run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import load_from_disk
from transformers import set_seed

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _shapes sits beside this file, also when loaded by path
from _shapes import describe_machine, print_machine, write_json  # noqa: E402

from detoxsum.config import TUNING_METHODS, load_stage_config  # noqa: E402
from detoxsum.data.sources import read_jsonl_split
from detoxsum.errors import ParamsError  # noqa: E402
from detoxsum.scoring.evaluation import TestSet, draw_examples
from detoxsum.training.lora import load_for_training, save_trained, train_lora
from detoxsum.scoring.metrics import rouge
from detoxsum.models.adapters import load_with_adapters
from detoxsum.models.loading import device
from detoxsum.models.summarizer import GenerationSettings, Summarizer

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "methods.json"
NEVER = 10**9  # checkpoint steps: a benchmark run is not resumed, and a full model's checkpoint is large


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path("."),
                        help="a workspace after `dvc repro tokenize` (artifacts/model, data/tokenized, params.yaml)")
    parser.add_argument("--methods", default=",".join(TUNING_METHODS), help="comma-separated, in table order")
    parser.add_argument("--no-base", action="store_true", help="leave out the untuned base model's row")
    parser.add_argument("--shots", default="", help="few-shot baselines of the base model, e.g. 1,3")
    parser.add_argument("--train-rows", type=int, help="train on the first N tokenized rows only (a quick try)")
    parser.add_argument("--eval-rows", type=int, help="compute the validation loss on the first N rows only")
    parser.add_argument("--test-rows", type=int, help="summarize the first N test dialogues only")
    parser.add_argument("--max-steps", type=int, help="train_lora.max_steps for every method (default: params.yaml)")
    parser.add_argument("--max-new-tokens", type=int, help="summary length cap (default: evaluate.max_new_tokens)")
    parser.add_argument("--lr", type=float, help="one learning rate for every method (default: each method's own)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    unknown = [m for m in args.methods.split(",") if m and m not in TUNING_METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {', '.join(TUNING_METHODS)}")
    return args


def score(model_dir: Path, adapters: list[Path], test_set: TestSet, settings: GenerationSettings) -> dict:
    """Greedy ROUGE of the model `model_dir` + `adapters`, loaded as generate_lora loads it."""
    model, tokenizer, family = load_with_adapters(model_dir, adapters, merge_all=True)
    model.to(device())
    started = time.perf_counter()
    summaries = Summarizer(model, tokenizer, family, settings).summarize(test_set.dialogues, show_progress=True)
    scores = rouge(summaries, test_set.references)
    return {"rouge1": scores["rouge1"], "rougeL": scores["rougeL"], "generate_s": round(time.perf_counter() - started, 1),
            "example": summaries[0] if summaries else ""}


def score_few_shot(project: Path, test_set: TestSet, settings: GenerationSettings, base, evaluate,
                   shots: list[int]) -> list[dict]:
    """Greedy ROUGE of the base model prompted with k training examples, for each k in `shots`."""
    model, tokenizer, family = load_with_adapters(project / "artifacts" / "model", [], merge_all=True)
    model.to(device())
    budget = evaluate.few_shot_max_source_tokens or base.max_source_tokens
    summarizer = Summarizer(model, tokenizer, family, dataclasses.replace(settings, max_source_tokens=budget))
    train = read_jsonl_split(project / "data" / "filtered" / "train.jsonl")
    examples = draw_examples(train, max(shots), base.seed, set(test_set.dialogues))
    rows = []
    for count in shots:
        prompts, fitted = summarizer.few_shot_prompts(test_set.dialogues, examples.pairs(count))
        started = time.perf_counter()
        summaries = summarizer.complete(prompts, show_progress=True)
        scores = rouge(summaries, test_set.references)
        rows.append({"method": f"base {count}-shot", "rouge1": scores["rouge1"], "rougeL": scores["rougeL"],
                     "generate_s": round(time.perf_counter() - started, 1),
                     "examples_in_prompt_mean": round(sum(fitted) / len(fitted), 2)})
        print(rows[-1], flush=True)
    return rows


def run_method(method: str, project: Path, features, base, cfg, settings, test_set, work: Path) -> dict:
    cfg = dataclasses.replace(cfg, method=method, checkpoint_steps=NEVER)
    set_seed(base.seed)
    started = time.perf_counter()
    try:
        model, tokenizer, family, precision = load_for_training(project / "artifacts" / "model", method, base.precision)
    except ParamsError as exc:  # qlora without 4-bit kernels here
        return {"method": method, "skipped": str(exc)}
    trained, metrics = train_lora(model, tokenizer, family, features["train"], features["validation"], cfg,
                                  base.seed, precision, work / f"checkpoints-{method}")
    wall_s = time.perf_counter() - started
    saved = work / method
    save_trained(trained, tokenizer, saved)
    del model, trained
    row = {"method": method, "lr": metrics["lr"], "precision": precision, "steps": metrics["steps"],
           "trainable_params": metrics["trainable_params"], "total_params": metrics["total_params"],
           "train_wall_s": round(wall_s, 1), "train_s": metrics["train_runtime_s"], "eval_loss": metrics["eval_loss"]}
    row.update(score(project / "artifacts" / "model", [saved], test_set, settings))
    return row


def print_table(rows: list[dict]) -> None:
    print(f"\n{'method':<14} {'trainable':>12} {'share':>7} {'lr':>7} {'wall s':>7} {'eval loss':>9} "
          f"{'ROUGE-1':>7} {'ROUGE-L':>7}")
    for row in rows:
        if "skipped" in row:
            print(f"{row['method']:<14} skipped: {row['skipped']}")
        elif row["method"].startswith("base"):
            print(f"{row['method']:<14} {'-':>12} {'-':>7} {'-':>7} {'-':>7} {'-':>9} {row['rouge1']:>7.2f} {row['rougeL']:>7.2f}")
        else:
            share = 100 * row["trainable_params"] / row["total_params"]
            print(f"{row['method']:<14} {row['trainable_params']:>12,} {share:>6.2f}% {row['lr']:>7.0e} "
                  f"{row['train_wall_s']:>7.1f} {row['eval_loss']:>9.4f} {row['rouge1']:>7.2f} {row['rougeL']:>7.2f}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    project = args.project.resolve()
    params = project / "params.yaml"
    base, cfg, evaluate = (load_stage_config(name, params) for name in ("base", "train_lora", "evaluate"))
    cfg = dataclasses.replace(cfg, lr=args.lr)
    if args.max_steps is not None:
        cfg = dataclasses.replace(cfg, max_steps=args.max_steps)
    features = load_from_disk(str(project / "data" / "tokenized"))
    for split, rows in (("train", args.train_rows), ("validation", args.eval_rows)):
        if rows:
            features[split] = features[split].select(range(min(rows, len(features[split]))))
    test_set = TestSet.from_split(read_jsonl_split(project / "data" / "filtered" / "test.jsonl"),
                                  args.test_rows or evaluate.max_test_rows)
    if args.max_new_tokens:
        evaluate = dataclasses.replace(evaluate, max_new_tokens=args.max_new_tokens)
    settings = GenerationSettings.from_configs(base, evaluate)
    facts = describe_machine(device())
    print_machine(facts)
    print(f"project {project}: {len(features['train'])} training rows, {len(test_set.dialogues)} test dialogues; "
          f"torch threads {torch.get_num_threads()}")
    rows = []
    if not args.no_base:
        rows.append({"method": "base", **score(project / "artifacts" / "model", [], test_set, settings)})
    if args.shots:
        rows += score_few_shot(project, test_set, settings, base, evaluate, [int(k) for k in args.shots.split(",")])
    with tempfile.TemporaryDirectory(prefix="methods-") as work:
        for method in filter(None, args.methods.split(",")):
            print(f"\n== {method}", flush=True)
            rows.append(run_method(method, project, features, base, cfg, settings, test_set, Path(work)))
            print(rows[-1], flush=True)  # on record even if a later method is stopped
    print_table(rows)
    results = {
        "benchmark": "methods",
        "machine": facts,
        "project": str(project),
        "train_rows": len(features["train"]),
        "test_dialogues": len(test_set.dialogues),
        "train_lora": {key: value for key, value in dataclasses.asdict(cfg).items() if key != "method"},
        "rows": rows,
    }
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
