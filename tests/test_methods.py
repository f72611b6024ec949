"""train_lora.method: lora, qlora, prompt_tuning and full each train only their weights on both
tiny models, save what loading needs and load back for generation; PPO, the summarizer and the
MLflow model take a fully fine-tuned model in place of the base; the errors name the key to fix."""

import shutil
import sys

import pandas as pd
import pytest
import torch
from conftest import fixture_rows
from datasets import Dataset
from pipeline import REPO, run_stage_module
from workspace import SETTINGS, make_adapters, pipeline_run

import detoxsum.training.lora as lora_module
from detoxsum.config import METHOD_LR, TrainLoraConfig, TrainPPOConfig, build_config
from detoxsum.data.features import tokenize_split
from detoxsum.errors import ParamsError
from detoxsum.training.lora import attach_prompt, load_for_training, save_trained, train_lora
from detoxsum.training.qlora import four_bit_kernel_problem
from detoxsum.models.adapters import FULL_MODEL, LORA, PROMPT_TUNING, load_with_adapters, saved_kind
from detoxsum.models.generation import generate_summaries
from detoxsum.models.loading import load_model
from detoxsum.models.prompts import fit_dialogue
from detoxsum.ppo import build_ppo_model
from detoxsum.models.summarizer import load_summarizer

PROMPT = "Summarize: {dialogue}\nSummary:"
HAS_4BIT = four_bit_kernel_problem(torch.device("cpu")) is None
SAVED_KIND = {"lora": LORA, "qlora": LORA, "prompt_tuning": PROMPT_TUNING, "full": FULL_MODEL}


def test_an_unknown_method_names_the_key():
    with pytest.raises(ParamsError, match=r"train_lora\.method.*lora, qlora, prompt_tuning, full.*'adapters'"):
        build_config(TrainLoraConfig, {"method": "adapters"}, "train_lora")
    with pytest.raises(ParamsError, match=r"train_lora\.num_virtual_tokens"):
        build_config(TrainLoraConfig, {"method": "prompt_tuning", "num_virtual_tokens": 0}, "train_lora")


def test_a_null_lr_is_the_methods_default_and_a_set_one_wins():
    assert [TrainLoraConfig(method=m).learning_rate for m in METHOD_LR] == list(METHOD_LR.values())
    assert TrainLoraConfig(method="full", lr=3e-5).learning_rate == 3e-5
    with pytest.raises(ParamsError, match=r"train_lora\.lr"):
        TrainLoraConfig(lr=0.0)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def changed_names(before: dict, after_model) -> set[str]:
    """Names (as before an adapter was injected) of the base tensors that training changed."""
    changed = set()
    for name, tensor in after_model.state_dict().items():
        original = name.replace(".base_layer", "")
        if original in before and not torch.equal(before[original].to(tensor.dtype), tensor):
            changed.add(original)
    return changed


def prompts_for(tokenizer, family, count=3):
    return [fit_dialogue(tokenizer, family, PROMPT, row["dialogue"], 64) for row in fixture_rows(count, seed=7)]


@pytest.mark.parametrize("method", ["lora", "qlora", "prompt_tuning", "full"])
def test_each_method_trains_only_its_weights_and_loads_back_for_generation(method, tiny_model_dir, tmp_path):
    if method == "qlora" and not HAS_4BIT:
        pytest.skip("no bitsandbytes 4-bit kernels on this machine (the error path is tested below)")
    model, tokenizer, family, precision = load_for_training(tiny_model_dir, method, "fp32")
    before = snapshot(model)
    features = tokenize_split(Dataset.from_list(fixture_rows(8)), tokenizer, family, PROMPT, 64, 16)
    cfg = TrainLoraConfig(method=method, r=4, alpha=8, dropout=0.0, lr=None if method == "full" else 5e-2,
                          max_steps=2 if method == "qlora" else 3, batch_size=4, logging_steps=1, eval_steps=100,
                          num_virtual_tokens=4)
    trained, metrics = train_lora(model, tokenizer, family, features, features, cfg, seed=0, precision=precision,
                                  work_dir=tmp_path / "work")
    assert metrics["method"] == method and metrics["lr"] == cfg.learning_rate
    base_after = trained.get_base_model() if hasattr(trained, "get_base_model") else trained
    changed = changed_names(before, base_after)
    trainable = {name for name, parameter in trained.named_parameters() if parameter.requires_grad}
    if method in ("lora", "qlora"):
        assert not changed and trainable and all("lora_" in name for name in trainable)
        assert all(p.abs().sum() > 0 for n, p in trained.named_parameters() if "lora_B" in n)  # B starts at zero
    elif method == "prompt_tuning":
        assert not changed and all("prompt_encoder" in name for name in trainable)
        soft_prompt = trained.prompt_encoder["default"].embedding.weight
        assert soft_prompt.shape[0] == 4 and metrics["trainable_params"] == soft_prompt.numel()
    else:
        assert len(changed) > len(before) // 2 and metrics["trainable_params"] == metrics["total_params"]

    saved = tmp_path / "lora"
    save_trained(trained, tokenizer, saved)
    assert saved_kind(saved) == SAVED_KIND[method]
    # A fully fine-tuned model is a base of its own: the original base is not read (here: not there).
    base_dir = tmp_path / "no-base" if method == "full" else tiny_model_dir
    loaded, loaded_tokenizer, loaded_family = load_with_adapters(base_dir, [saved], merge_all=True)
    summaries = generate_summaries(loaded, loaded_tokenizer, loaded_family, prompts_for(loaded_tokenizer, loaded_family),
                                   batch_size=2, max_new_tokens=4, show_progress=False)
    assert len(summaries) == 3 and all(isinstance(summary, str) for summary in summaries)
    if method == "full":
        assert torch.equal(loaded.state_dict()[next(iter(changed))], trained.state_dict()[next(iter(changed))])


def first_step_scores(model, tokenizer, family) -> torch.Tensor:
    batch = tokenizer.pad([{"input_ids": family.prompt_ids(tokenizer, text)} for text in prompts_for(tokenizer, family, 2)],
                          padding=True, padding_side="left", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=1, do_sample=False, output_scores=True, return_dict_in_generate=True,
                             pad_token_id=tokenizer.pad_token_id)
    return out.scores[0]


def test_a_soft_prompt_changes_what_generation_computes(tiny_model_dir, tmp_path):
    model, tokenizer, family = load_model(tiny_model_dir)
    base_scores = first_step_scores(model, tokenizer, family)
    with torch.no_grad():
        attach_prompt(model, tokenizer, family, 4).save_pretrained(tmp_path / "prompt")
    prompted, tokenizer, family = load_with_adapters(tiny_model_dir, [tmp_path / "prompt"], merge_all=True)
    assert not torch.allclose(first_step_scores(prompted, tokenizer, family), base_scores)


def soft_prompt_dir(model_dir, out_dir):
    model, tokenizer, family = load_model(model_dir)
    attach_prompt(model, tokenizer, family, 4).save_pretrained(out_dir)
    return out_dir


def test_qlora_without_4bit_kernels_fails_before_loading_naming_the_method(tiny_llama_dir, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(lora_module, "load_model", no_loading)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as where it is not installed
    with pytest.raises(ParamsError) as raised:
        load_for_training(tiny_llama_dir, "qlora", "fp32")
    message = str(raised.value)
    assert "\n" not in message and "train_lora.method" in message and "bitsandbytes is not installed" in message
    assert "use method 'lora'" in message


@pytest.mark.skipif(not HAS_4BIT, reason="bitsandbytes is not installed")
def test_qlora_where_bitsandbytes_has_no_kernel_for_the_device(tiny_llama_dir, monkeypatch):
    import bitsandbytes.functional

    def no_kernel(*args, **kwargs):
        raise NotImplementedError("quantize_4bit is not implemented for this device")

    monkeypatch.setattr(bitsandbytes.functional, "quantize_4bit", no_kernel)
    with pytest.raises(ParamsError, match=r"train_lora\.method.*has no 4-bit kernels for cpu \(quantize_4bit is not"):
        load_for_training(tiny_llama_dir, "qlora", "fp32")


def test_ppo_refuses_a_soft_prompt_with_one_line(tiny_llama_dir, tmp_path):
    prompt_dir = soft_prompt_dir(tiny_llama_dir, tmp_path / "lora")
    with pytest.raises(ParamsError, match=r"train_lora\.method' is 'prompt_tuning'.*use method lora, qlora or full"):
        build_ppo_model(tiny_llama_dir, [prompt_dir], TrainPPOConfig())


def test_the_train_ppo_stage_refuses_a_soft_prompt_before_any_work(tiny_llama_dir, tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    soft_prompt_dir(tiny_llama_dir, tmp_path / "artifacts" / "lora")  # no model, no data: the check comes first
    result = run_stage_module("train_ppo", tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "train_lora.method" in errors[0] and "prompt_tuning" in errors[0]
    assert not (tmp_path / "artifacts" / "ppo").exists()


@pytest.fixture
def full_model_dir(tiny_llama_dir, tmp_path):
    """The tiny Llama with its weights moved, saved as train_lora's `full` method saves it."""
    model, tokenizer, _ = load_model(tiny_llama_dir)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)
    save_trained(model, tokenizer, tmp_path / "full")
    return tmp_path / "full"


def test_ppo_on_a_full_model_takes_it_as_the_frozen_reference(full_model_dir, tmp_path):
    ppo = build_ppo_model(tmp_path / "no-base", [full_model_dir], TrainPPOConfig(r=2, alpha=4))
    full, _, _ = load_model(full_model_dir)
    reference = ppo.policy.get_base_model().state_dict()
    for name, tensor in full.state_dict().items():
        match = [key for key in reference if key.replace(".base_layer", "") == name]
        assert match and torch.equal(reference[match[0]], tensor), name


def test_the_summarizer_and_the_mlflow_model_load_a_full_model_in_place_of_the_base(
    full_model_dir, tiny_llama_dir, tmp_path, monkeypatch
):
    summarizer = load_summarizer(tmp_path / "no-base", [full_model_dir], SETTINGS)
    assert len(summarizer.summarize(["#Person1#: Coffee?\n#Person2#: Please."])) == 1

    from detoxsum.ship.registry import embedded_uri, load_model as load_logged, register_pipeline_run
    from detoxsum.stages import register as register_stage

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(full_model_dir, tmp_path / "artifacts" / "lora")
    assert register_stage.bundled_base(bundle_base_model=True, revision=None) is None  # the `lora` artifact is the base
    ppo = make_adapters(tiny_llama_dir, tmp_path / "adapters")["ppo"]
    run = pipeline_run("a" * 40, 20.0, 0.1, {"lora": tmp_path / "artifacts" / "lora", "ppo": ppo},
                       base_model=tmp_path / "no-base")
    register_pipeline_run(run, register_stage.load_stage_config("register", REPO / "params.yaml"),
                          embedded_uri(tmp_path), tmp_path)
    logged = load_logged("models:/detoxsum-summarizer@champion", tmp_path)
    assert len(logged.predict(pd.DataFrame({"dialogue": ["#Person1#: Late again?\n#Person2#: The train."]}))) == 1
