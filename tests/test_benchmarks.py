"""The benchmark scripts run (their timings are printed, never asserted)."""

import importlib.util
import json
from pathlib import Path

import yaml
from conftest import fixture_rows
from test_ppo import save_sft_adapter

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ppo_step_benchmark_times_steps_with_overrides(tiny_llama_dir, tmp_path, capsys):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["base"]["max_source_tokens"] = 48
    params["train_ppo"].update(batch_size=4, minibatch_size=2, ppo_epochs=1, max_new_tokens=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps(row) + "\n" for row in fixture_rows(6)))
    sft_dir = save_sft_adapter(tiny_llama_dir, tmp_path / "sft")

    history = load_script("ppo_step").main([
        "--steps", "2", "--set", "top_layers=1", "--params", str(tmp_path / "params.yaml"),
        "--model-dir", str(tiny_llama_dir), "--lora-dir", str(sft_dir), "--train-file", str(train_file)])

    assert len(history) == 2 and all(stats["time_update_s"] > 0 for stats in history)
    out = capsys.readouterr().out
    assert "{'top_layers': 1}" in out and "step 1:" in out


def test_generation_benchmark_compares_with_plain_generate(tiny_llama_dir, tmp_path, capsys):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["base"]["max_source_tokens"] = 48
    params["base"]["precision"] = "fp32"
    params["evaluate"].update(batch_size=2, max_new_tokens=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    test_file = tmp_path / "test.jsonl"
    test_file.write_text("".join(json.dumps(row) + "\n" for row in fixture_rows(5)))
    sft_dir = save_sft_adapter(tiny_llama_dir, tmp_path / "sft")

    result = load_script("generation").main([
        "--params", str(tmp_path / "params.yaml"), "--model-dir", str(tiny_llama_dir), "--lora-dir", str(sft_dir),
        "--test-file", str(test_file), "--json", str(tmp_path / "generation.json")])

    assert result["dialogues"] == 5 and result["anchor_s"] > 0 and result["ours_s"] > 0
    assert result["same_greedy_summaries"] == 5  # the same work on both sides
    assert json.loads((tmp_path / "generation.json").read_text()) == result
    assert "| ratio |" in capsys.readouterr().out
