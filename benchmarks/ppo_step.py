"""Where a PPO step's time goes: sampling, the two scoring forward passes, and the update epochs.

Runs a few PPO steps of the `train_ppo` params on the pipeline's own outputs (after `dvc repro`)
and prints one line of timings per step, so settings that change the cost of a step (`top_layers`,
`batch_size`, `max_new_tokens`, `ppo_epochs`) can be compared before spending a run on them:

    python benchmarks/ppo_step.py                        # the params as they are
    python benchmarks/ppo_step.py --set top_layers=null  # PPO adapter in every layer, nothing cached

The steps are `ppo.train_ppo`'s own (optimizer, KL controller, greedy-baseline pass before the
first step, which is not in the step times). The first step includes warm-up; compare the later
ones, on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm
from transformers import AutoConfig

from detoxsum.config import TrainPPOConfig, build_config, load_params, load_stage_config
from detoxsum.data.sources import read_jsonl_split
from detoxsum.models.loading import device
from detoxsum.precision import resolve_for_model
from detoxsum.ppo import build_ppo_model, hardest_dialogues, render_prompts, train_ppo
from detoxsum.scoring.reward import build_reward_model

# The parts of a step that `ppo_step` times; their sum is the step.
TIMINGS = ("time_generate_s", "time_reward_s", "time_forward_s", "time_update_s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a train_ppo param (YAML value), e.g. top_layers=10; repeatable")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model-dir", type=Path, default=Path("artifacts/model"))
    parser.add_argument("--lora-dir", type=Path, default=Path("artifacts/lora"))
    parser.add_argument("--train-file", type=Path, default=Path("data/filtered/train.jsonl"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    args = parse_args(argv)
    base = load_stage_config("base", args.params)
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    section = {**(load_params(args.params).get("train_ppo") or {}), **overrides, "steps": args.steps}
    cfg = build_config(TrainPPOConfig, section, "train_ppo")
    reward_model = build_reward_model(cfg.reward)
    dialogues = hardest_dialogues(list(read_jsonl_split(args.train_file)["dialogue"]), reward_model.rewards,
                                  cfg.hardest_prompts)
    precision = resolve_for_model(base.precision, AutoConfig.from_pretrained(args.model_dir), device())
    ppo = build_ppo_model(args.model_dir, [args.lora_dir], cfg, precision).to(device())
    trainable = sum(p.numel() for p in ppo.trainable_parameters())
    print(f"train_ppo {overrides or 'as in params'}: {trainable:,} trainable parameters, "
          f"{torch.get_num_threads()} threads ({torch.backends.cpu.get_cpu_capability()}), {precision}, batch {cfg.batch_size}, {cfg.ppo_epochs} epochs")
    step_numbers = itertools.count()

    def report(stats: dict[str, float]) -> None:  # under train_ppo's progress bar, hence tqdm.write
        split = "  ".join(f"{key[5:-2]} {stats[key]:5.2f} s" for key in TIMINGS)
        tqdm.write(f"step {next(step_numbers)}: {split}  step {sum(stats[key] for key in TIMINGS):5.2f} s  "
              f"response {stats['response_length']:.1f} tokens")

    return train_ppo(ppo, render_prompts(dialogues, ppo, base), reward_model.rewards, cfg, base.seed, on_step=report)


if __name__ == "__main__":
    main()
