"""Seconds per PPO step of this project's PPO (`detoxsum.ppo`) against trl 0.11.4's `PPOTrainer`.

One step, on each side, is: sample `--response-tokens` tokens for `--batch` prompts of
`--prompt-tokens` tokens, score them, the policy and reference forward passes, and 4 PPO epochs of
minibatches of 4. The step's wall time is the median of `--steps` steps after one warm-up step;
samples per second is batch / that time. Three rows are printed:

    ours, default      LoRA r=16 on q_proj/v_proj of the last 10 layers (`top_layers: 10`, params.yaml)
    ours, all layers   the same LoRA in every layer (`top_layers: null`)
    trl 0.11.4         `PPOTrainer.step` on `AutoModelForCausalLMWithValueHead` with the same peft LoRA

and the ratio of each of ours to trl in samples per second (the goal: ours >= 2x). Run it with

    python benchmarks/ppo_vs_trl.py            # SmolLM2-135M shape, batch 8, 128 + 40 tokens
    python benchmarks/ppo_vs_trl.py --small    # a tiny model, for trying the script out

on an otherwise idle machine: other jobs on the cores slow sampling (hundreds of small ops per token,
each waiting for a preempted thread) far more than the big matmuls, which skews the comparison.
It writes benchmarks/results/ppo_vs_trl.json (`--json`).

trl 0.11.4 (the last trl with PPOTrainer) needs transformers 4.4x, so the first run pip-installs it,
without dependencies, with the few packages it imports that this virtualenv lacks or has in a too-new
version, into ~/.cache/detoxsum-bench/trl-0.11.4 (`--trl-dir`); never into the virtualenv, and
torch is this virtualenv's own. The trl side runs in a subprocess with that folder first on
PYTHONPATH, so the two transformers versions never meet in one process. Later runs reuse the folder.

Fairness choices:
- The same model files on both sides: a Llama built from a config with random weights (nothing can
  be downloaded), saved once. Its tokenizer is a word-level vocabulary "t0 t1 ..." of the model's
  size, so a prompt's text tokenizes to exactly the random ids that trl is given as tensors.
- Both sides sample at temperature 1 with no top-k/top-p, and exactly `--response-tokens` tokens:
  trl gets min_new_tokens = max_new_tokens in its generation kwargs; ours passes its own kwargs to
  generate, so min_new_tokens is set on the model's generation config, which generate falls back to.
  The mean response length each side actually produced is printed.
- The reward is a fixed random score per sample, so no reward model enters the times.
- fp32 on both sides; adaptive KL, lambda 0.95 and whitened advantages as trl's defaults; no early
  stop on either side, so every step runs all 4 x 2 minibatch updates.
- trl computes logits over the whole prompt + response and keeps its own value head next to the
  LoRA; ours projects only the response positions. That is part of what is being compared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _shapes sits beside this file, also when loaded by path

TRL_PACKAGES = [
    "trl==0.11.4",
    "transformers==4.46.3",  # trl 0.11.x was released against transformers 4.45/4.46
    "tokenizers==0.20.3",  # transformers 4.46 wants tokenizers < 0.21
    "huggingface_hub==0.26.5",  # transformers 4.46 wants < 1.0
    "accelerate==1.1.1",  # accelerate and peft of transformers 4.46's time; the virtualenv's
    "peft==0.13.2",  # are made for transformers 5
    "datasets==3.1.0",  # imported by trl's PPOTrainer; the virtualenv's needs a newer huggingface_hub
    "tyro==0.8.14",  # imported by trl's PPOConfig
    "docstring_parser==0.16",  # imported by tyro
]
DEFAULT_TRL_DIR = Path.home() / ".cache" / "detoxsum-bench" / "trl-0.11.4"
# The sizes build_random_llama takes from a shape; the rest of its config is its own.
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "vocab_size")
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=12, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=1024)
PAD, EOS = "<pad>", "<eos>"  # ids 0 and 1; prompts use ids from 2 up
LORA = dict(r=16, alpha=32, targets=["q_proj", "v_proj"])
MINIBATCH, EPOCHS, LR, KL_COEF, LAM = 4, 4, 1.41e-5, 0.2, 0.95  # trl 0.11.4's defaults where it has one


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny model, for a quick try")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--response-tokens", type=int, default=40)
    parser.add_argument("--top-layers", type=int, default=10, help="our default run's top_layers (params.yaml)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/ppo_vs_trl.json"))
    parser.add_argument("--trl-dir", type=Path, default=DEFAULT_TRL_DIR, help="where trl 0.11.4 is installed")
    parser.add_argument("--trl-worker", type=Path, help=argparse.SUPPRESS)  # internal: run the trl side
    return parser.parse_args(argv)


# --- setup: trl's packages, the shared model, prompts and rewards ------------------------------------


def ensure_trl_installed(target: Path) -> float:
    """Install TRL_PACKAGES into `target` unless already there; returns the seconds it took."""
    marker = target / "INSTALLED.txt"
    wanted = "\n".join(TRL_PACKAGES)
    if marker.exists() and marker.read_text() == wanted:
        return 0.0
    print(f"installing trl 0.11.4 and its transformers into {target} (once) ...", flush=True)
    started = time.perf_counter()
    staging = target.with_name(target.name + ".partial")  # a failed install never looks complete
    shutil.rmtree(staging, ignore_errors=True)
    # --no-deps: the rest (torch above all) comes from this virtualenv
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--no-deps", "--target", str(staging), *TRL_PACKAGES], check=True)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    marker.write_text(wanted)
    return time.perf_counter() - started


def build_random_llama(out_dir: Path, shape: dict) -> None:
    """A randomly initialised Llama and a word-level tokenizer ("t0", "t1", ...) of the same size."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1} | {f"t{i}": i for i in range(2, shape["vocab_size"])}
    words = Tokenizer(models.WordLevel(vocab, unk_token=PAD))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token=PAD, eos_token=EOS)
    torch.manual_seed(0)
    config = LlamaConfig(**shape, max_position_embeddings=2048, tie_word_embeddings=True,
                         pad_token_id=0, eos_token_id=1, bos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def random_prompts(vocab_size: int, batch: int, length: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(2, vocab_size, (batch, length), generator=generator).tolist()


def fixed_scores(batch: int) -> list[float]:
    """One random score per sample, the same every step: a reward that costs nothing."""
    return torch.randn(batch, generator=torch.Generator().manual_seed(2)).tolist()


def step_summary(name: str, step_seconds: list[float], batch: int, response_length: float) -> dict:
    median = statistics.median(step_seconds)
    return {"name": name, "seconds_per_step": median, "samples_per_second": batch / median,
            "step_seconds": step_seconds, "response_length": response_length}


# --- our side (this virtualenv) ----------------------------------------------------------------------


def run_ours(model_dir: Path, args: argparse.Namespace, prompts: list[list[int]], top_layers: int | None) -> dict:
    from detoxsum.config import TrainPPOConfig, build_config
    from detoxsum.models.loading import device
    from detoxsum.ppo import ADAM_EPS, build_ppo_model, ppo_step

    cfg = build_config(TrainPPOConfig, {
        "steps": args.steps + 1, "batch_size": args.batch, "minibatch_size": MINIBATCH, "ppo_epochs": EPOCHS,
        "lr": LR, "r": LORA["r"], "alpha": LORA["alpha"], "target_modules": LORA["targets"],
        "top_layers": top_layers, "max_new_tokens": args.response_tokens, "reward_shaping": "none",
        "reward_baseline": "none", "lam": LAM, "kl_coef": KL_COEF, "adaptive_kl": True,
        "whiten_advantages": True, "early_stop_approx_kl": None,
    }, "train_ppo")
    torch.manual_seed(0)
    ppo = build_ppo_model(model_dir, [], cfg, precision="fp32").to(device())
    # sample_responses passes max_new_tokens itself; generate takes min_new_tokens from here
    ppo.policy.get_base_model().generation_config.min_new_tokens = args.response_tokens
    texts = [" ".join(f"t{i}" for i in row) for row in prompts]  # word-level: one word, one id
    scores = torch.tensor(fixed_scores(args.batch))
    optimizer = torch.optim.AdamW(ppo.trainable_parameters(), lr=cfg.lr, eps=ADAM_EPS, weight_decay=0.0)
    beta, generator = cfg.kl_coef, torch.Generator().manual_seed(0)
    step_seconds, lengths = [], []
    for _ in range(cfg.steps):
        started = time.perf_counter()
        stats, beta = ppo_step(ppo, optimizer, beta, texts, lambda batch: scores[: len(batch)], cfg, generator)
        step_seconds.append(time.perf_counter() - started)
        lengths.append(stats["response_length"])
    name = f"ours, LoRA in top {top_layers} layers" if top_layers else "ours, LoRA in all layers"
    return step_summary(name, step_seconds[1:], args.batch, statistics.mean(lengths[1:]))


# --- trl's side (a subprocess on trl's packages) -----------------------------------------------------


def run_trl(model_dir: Path, args: argparse.Namespace, prompts: list[list[int]]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        spec, result = Path(tmp, "spec.json"), Path(tmp, "result.json")
        spec.write_text(json.dumps({"model_dir": str(model_dir), "prompts": prompts, "steps": args.steps,
                                    "response_tokens": args.response_tokens, "result": str(result)}))
        # trl's folder first: its transformers, tokenizers, ... shadow the virtualenv's; torch is not there
        python_path = os.pathsep.join(filter(None, [str(args.trl_dir), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": python_path, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        subprocess.run([sys.executable, __file__, "--trl-worker", str(spec)], env=env, check=True)
        return json.loads(result.read_text())


def trl_worker(spec_path: Path) -> None:
    """Time `PPOTrainer.generate` + `PPOTrainer.step` under trl 0.11.4 and write the summary to JSON."""
    import transformers
    import trl
    from peft import LoraConfig
    from transformers import PreTrainedTokenizerFast
    from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

    spec = json.loads(spec_path.read_text())
    assert trl.__version__ == "0.11.4", f"trl {trl.__version__} on the path, expected 0.11.4"
    batch, steps, new_tokens = len(spec["prompts"]), spec["steps"], spec["response_tokens"]
    # loaded from tokenizer.json directly: the tokenizer_config.json was written by transformers 5
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(Path(spec["model_dir"], "tokenizer.json")),
                                        pad_token=PAD, eos_token=EOS)
    torch.manual_seed(0)
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules=LORA["targets"], lora_dropout=0.0,
                      bias="none", task_type="CAUSAL_LM")
    model = AutoModelForCausalLMWithValueHead.from_pretrained(spec["model_dir"], peft_config=lora,
                                                              torch_dtype=torch.float32)
    config = PPOConfig(batch_size=batch, mini_batch_size=MINIBATCH, ppo_epochs=EPOCHS, learning_rate=LR,
                       init_kl_coef=KL_COEF, adap_kl_ctrl=True, lam=LAM, early_stopping=False, seed=0)
    trainer = PPOTrainer(config, model, ref_model=None, tokenizer=tokenizer)  # peft: reference = adapter off
    queries = [torch.tensor(row) for row in spec["prompts"]]
    scores = [torch.tensor(score) for score in fixed_scores(batch)]
    sampling = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, min_new_tokens=new_tokens,
                    max_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    print(f"trl side: trl {trl.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} torch threads, device {trainer.current_device}", flush=True)
    step_seconds, lengths = [], []
    for _ in range(steps + 1):
        started = time.perf_counter()
        # the whole batch in one generate call, as ours samples it
        responses = trainer.generate(queries, batch_size=batch, return_prompt=False, **sampling)
        trainer.step(queries, responses, scores)
        step_seconds.append(time.perf_counter() - started)
        lengths.append(statistics.mean(len(response) for response in responses))
    summary = step_summary("trl 0.11.4 PPOTrainer, LoRA in all layers", step_seconds[1:], batch,
                           statistics.mean(lengths[1:]))
    Path(spec["result"]).write_text(json.dumps(summary))


# --- report ------------------------------------------------------------------------------------------


def print_table(rows: list[dict], trl_row: dict) -> None:
    print(f"\n{'run':<44} {'s/step':>8} {'samples/s':>10} {'resp tokens':>12} {'ours/trl':>9}")
    for row in rows:
        row["ratio_vs_trl"] = row["samples_per_second"] / trl_row["samples_per_second"]
        print(f"{row['name']:<44} {row['seconds_per_step']:8.2f} {row['samples_per_second']:10.3f} "
              f"{row['response_length']:12.1f} {row['ratio_vs_trl']:8.2f}x")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.trl_worker:
        return trl_worker(args.trl_worker)
    # Here, not at the top: the trl worker runs this file on trl's transformers, which _shapes must not meet.
    from _shapes import SMOLLM2_135M, describe_machine, print_machine, write_json

    shape_name = "tiny" if args.small else "SmolLM2-135M"
    shape = TINY if args.small else {key: SMOLLM2_135M[key] for key in SHAPE_KEYS}
    machine = describe_machine()
    print_machine(machine)
    install_seconds = ensure_trl_installed(args.trl_dir)
    if install_seconds:
        print(f"installed trl 0.11.4 in {install_seconds:.0f} s")
    prompts = random_prompts(shape["vocab_size"], args.batch, args.prompt_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp, "model")
        build_random_llama(model_dir, shape)
        settings = {"model": f"random Llama, {shape_name} shape", "batch": args.batch, "minibatch": MINIBATCH,
                    "ppo_epochs": EPOCHS, "prompt_tokens": args.prompt_tokens,
                    "response_tokens": args.response_tokens, "precision": "fp32", "lora_r": LORA["r"],
                    "lora_targets": LORA["targets"], "timed_steps": args.steps, "warmup_steps": 1}
        print(f"{settings['model']}, batch {args.batch} (minibatch {MINIBATCH}, {EPOCHS} epochs), "
              f"{args.prompt_tokens} prompt + {args.response_tokens} response tokens, fp32, "
              f"median of {args.steps} steps after 1 warm-up", flush=True)
        ours = [run_ours(model_dir, args, prompts, args.top_layers), run_ours(model_dir, args, prompts, None)]
        trl_row = run_trl(model_dir, args, prompts)
    rows = [*ours, trl_row]
    print_table(rows, trl_row)
    report = {"machine": machine, "settings": settings, "trl_install_seconds": install_seconds, "runs": rows}
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
