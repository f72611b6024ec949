"""Helpers for the registry and summarize tests: tiny adapters and a fake pipeline workspace.

The adapters are fresh LoRA adapters on the tiny Llama (their B matrices start at zero, so they do
not change the outputs); they exercise the same load path as trained ones, without training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from peft import LoraConfig, get_peft_model
from pipeline import REPO

from detoxsum.models.loading import load_model
from detoxsum.ship.registry import PipelineRun
from detoxsum.models.summarizer import GenerationSettings

SETTINGS = GenerationSettings(prompt="Summarize the following conversation.\n\n{dialogue}\n\nSummary:",
                              max_source_tokens=96, max_new_tokens=6, batch_size=4, num_beams=1, precision="fp32")


def make_adapters(model_dir: Path, out_dir: Path) -> dict[str, Path]:
    """`lora` and `ppo` adapter folders for the model in `model_dir`."""
    adapters = {}
    for name in ("lora", "ppo"):
        model, _, family = load_model(model_dir)
        config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type=family.peft_task_type)
        get_peft_model(model, config).save_pretrained(out_dir / name)
        adapters[name] = out_dir / name
    return adapters


TEST_SET = "f" * 64  # metrics/evaluate.json's test_set_fingerprint


def evaluate_metrics(rouge_l: float, toxicity: float, test_set: str = TEST_SET) -> dict:
    """A metrics/evaluate.json with the gated numbers of the `ppo` block set."""
    def block(rouge, tox):
        return {"rouge1": rouge + 5, "rouge2": rouge / 3, "rougeL": rouge, "rougeLsum": rouge,
                "toxicity_profanity_check_mean": tox, "toxicity_profanity_check_std": 0.01,
                "toxicity_profanity_check_frac_toxic": 0.0, "summary_words_mean": 12.0}
    return {"base": block(10.0, 0.2), "lora": block(rouge_l - 1, toxicity + 0.05), "ppo": block(rouge_l, toxicity),
            "num_test_dialogues": 4, "test_set_fingerprint": test_set, "detox": {"toxicity_profanity_check_mean_change_pct": -10.0}}


def prediction_rows(summaries: list[str], toxicity: list[float], model: str = "ppo") -> list[dict]:
    """Rows of results/predictions.jsonl: test dialogues with one reference each and `model`'s summaries."""
    return [{"id": f"test-{index:02d}", "dialogue": f"#Person1#: Item {index} of the list.\n#Person2#: Noted.",
             "references": [f"#Person2# notes item {index} of the list."], model: summary,
             f"{model}_toxicity_profanity_check": score}
            for index, (summary, score) in enumerate(zip(summaries, toxicity))]


def make_workspace(root: Path, model_dir: Path, adapters: dict[str, Path], rouge_l: float = 20.0,
                   toxicity: float = 0.1) -> Path:
    """A folder that looks like the repository after `dvc repro` up to evaluate, with tiny models."""
    root.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["base"].update(max_source_tokens=96, precision="fp32")
    params["fetch"]["model"] = str(model_dir)
    params["evaluate"].update(batch_size=4, max_new_tokens=6)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(model_dir, root / "artifacts" / "model")
    for name, path in adapters.items():
        shutil.copytree(path, root / "artifacts" / name)
    (root / "metrics").mkdir()
    (root / "metrics" / "evaluate.json").write_text(json.dumps(evaluate_metrics(rouge_l, toxicity)))
    (root / "metrics" / "train_lora.json").write_text(json.dumps({"train_loss": 2.5, "steps": 2}))
    (root / "results").mkdir()
    rows = prediction_rows(["#Person2# notes the item."] * 4, [toxicity] * 4)
    (root / "results" / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "plots" / "toxicity").mkdir(parents=True)
    (root / "plots" / "toxicity" / "profanity_check.csv").write_text("toxicity,lora,ppo\n0.05,3,4\n")
    return root


def pipeline_run(commit: str, rouge_l: float, toxicity: float, adapters: dict[str, Path], base_model: Path,
                 bundle: Path | None = None, predictions: list[dict] | None = None,
                 test_set: str = TEST_SET) -> PipelineRun:
    """What the register stage would gather, for a result with these gate numbers."""
    return PipelineRun(
        params={"base": {"seed": 42}, "train_lora": {"lr": 0.001, "target_modules": None},
                "evaluate": {"toxicity_classifiers": [{"name": "profanity_check"}]}},
        metrics={"evaluate": evaluate_metrics(rouge_l, toxicity, test_set)},
        git_commit=commit, dvc_lock_sha256="0" * 64, base_model=str(base_model),
        adapters=dict(adapters), settings=SETTINGS, bundled_base_dir=bundle, predictions=predictions or [],
    )
