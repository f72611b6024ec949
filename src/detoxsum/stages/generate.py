"""generate: summarize the test split with one model variant (base, lora or ppo), adapters merged.

Run: `python -m detoxsum.stages.generate <variant>` (dvc.yaml has one stage per variant, so a
variant is regenerated only when its own model or the generation params change: a new PPO adapter
leaves the base and LoRA summaries as they were). Reads `base`, `evaluate`, the fetched model, the
variant's adapters and `data/filtered/test.jsonl`; writes `results/summaries/<variant>.json`: the
summaries in test order, the precision `base.precision` resolved to here, and the time taken.
For `base`, also the greedy few-shot summaries of every `evaluate.shots` count above 0, with
examples drawn from `data/filtered/train.jsonl` by `base.seed` (key `few_shot`).
With `base.num_processes` > 1 the dialogues are shared out among processes (distributed.py).
"""

import sys

from accelerate.utils import set_seed

from detoxsum.config import load_stage_config
from detoxsum.data.sources import read_jsonl_split
from detoxsum.distributed import gather, init_process_group, is_main_process, rank_and_world, relaunch_if_parallel
from detoxsum.errors import ParamsError
from detoxsum.outputs import run_stage, write_json_atomic
from detoxsum.scoring.evaluation import Examples, TestSet, draw_examples, generate_variant
from detoxsum.scoring.reward import build_scorer
from detoxsum.stages.paths import LORA_DIR, MODEL_DIR, PPO_DIR, SUMMARIES_DIR, TEST_FILE, TRAIN_FILE, timing_file

VARIANT_ADAPTERS = {"base": [], "lora": [LORA_DIR], "ppo": [LORA_DIR, PPO_DIR]}


def main() -> None:
    variant = sys.argv[1] if len(sys.argv) > 1 else ""
    if variant not in VARIANT_ADAPTERS:
        raise ParamsError(f"generate: variant must be one of {', '.join(VARIANT_ADAPTERS)}, got {variant!r}")
    base = load_stage_config("base")
    cfg = load_stage_config("evaluate")
    relaunch_if_parallel(base.num_processes, "detoxsum.stages.generate", [variant])
    init_process_group()
    set_seed(base.seed)
    for spec in cfg.toxicity_classifiers:
        build_scorer(spec)
    test_split = read_jsonl_split(TEST_FILE)
    test_set = TestSet.from_split(test_split, cfg.max_test_rows)
    examples = few_shot_examples(test_split["dialogue"], base.seed, cfg.shots) if variant == "base" else None
    rank, world = rank_and_world()
    generated = generate_variant(MODEL_DIR, VARIANT_ADAPTERS[variant], test_set.shard(rank, world), base, cfg,
                                 variant, seed=base.seed + rank, examples=examples)
    generated["summaries"] = gather(generated["summaries"])
    for block in generated.get("few_shot", {}).values():
        block["summaries"] = gather(block["summaries"])
    if is_main_process():
        write_json_atomic(SUMMARIES_DIR / f"{variant}.json", generated)
        print(f"generate: {variant}: {len(generated['summaries'])} summaries in {generated['runtime_s']} s "
              f"({generated['precision']}, {world} process{'es' if world > 1 else ''})")
        for count, block in generated.get("few_shot", {}).items():
            print(f"generate: {variant} {count}-shot: greedy summaries in {block['runtime_s']} s")


def few_shot_examples(test_dialogues: list[str], seed: int, shots: list[int]) -> Examples | None:
    """The training examples for the base model's few-shot prompts (the same on every process);
    None when `evaluate.shots` asks for none."""
    most = max(shots)
    return draw_examples(read_jsonl_split(TRAIN_FILE), most, seed, set(test_dialogues)) if most > 0 else None


if __name__ == "__main__":
    run_stage(main, timing_file(f"generate_{sys.argv[1]}") if len(sys.argv) > 1 else None)
