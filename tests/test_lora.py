import json

import pytest
import torch
from conftest import fixture_rows
from datasets import Dataset

from detoxsum.config import TrainLoraConfig
from detoxsum.data import tokenize_split
from detoxsum.errors import ParamsError
from detoxsum.lora import attach_lora, lora_targets, top_layer_targets, train_lora
from detoxsum.modeling import load_model


def test_default_targets_per_architecture(tiny_t5_dir, tiny_llama_dir):
    assert lora_targets(load_model(tiny_t5_dir)[0], None) == ["q", "v"]
    assert lora_targets(load_model(tiny_llama_dir)[0], None) == ["q_proj", "v_proj"]


def test_unknown_target_module_names_the_key(tiny_llama_dir):
    with pytest.raises(ParamsError, match=r"train_lora\.target_modules.*'q'"):
        lora_targets(load_model(tiny_llama_dir)[0], ["q"])


def test_top_layer_targets_are_the_last_decoder_layers(tiny_t5_dir, tiny_llama_dir):
    llama = load_model(tiny_llama_dir)[0]  # 2 layers
    assert top_layer_targets(llama, ["q_proj", "v_proj"], 1) == ["model.layers.1.self_attn.q_proj",
                                                                 "model.layers.1.self_attn.v_proj"]
    assert len(top_layer_targets(llama, ["q_proj"], 5)) == 2  # more layers than the model has: all of them
    t5_targets = top_layer_targets(load_model(tiny_t5_dir)[0], ["q", "v"], 1)
    assert t5_targets == ["decoder.block.1.layer.0.SelfAttention.q", "decoder.block.1.layer.0.SelfAttention.v",
                          "decoder.block.1.layer.1.EncDecAttention.q", "decoder.block.1.layer.1.EncDecAttention.v"]
    with pytest.raises(ParamsError, match=r"train_ppo\.top_layers"):
        top_layer_targets(llama, ["embed_tokens"], 1)


def test_training_changes_only_the_adapter_and_lowers_loss(tiny_model_dir, tmp_path):
    model, tokenizer, family = load_model(tiny_model_dir)
    base_before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    features = tokenize_split(Dataset.from_list(fixture_rows(8)), tokenizer, family,
                              "Summarize: {dialogue}\nSummary:", 64, 16)
    cfg = TrainLoraConfig(r=4, alpha=8, dropout=0.0, lr=5e-2, epochs=1, max_steps=12, batch_size=4,
                          logging_steps=1, eval_steps=100)
    peft_model, metrics = train_lora(model, tokenizer, family, features, features, cfg, seed=0, precision="fp32",
                                     work_dir=tmp_path)
    assert metrics["steps"] == 12
    assert metrics["eval_loss"] < metrics["train_loss"]  # final eval after 12 steps vs the running mean
    adapter_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert adapter_b and all(p.abs().sum() > 0 for p in adapter_b)  # B starts at zero
    base_model = peft_model.get_base_model()
    for name, tensor in base_model.state_dict().items():
        if "lora_" not in name and "base_layer" not in name:
            assert torch.equal(tensor, base_before[name]), name


def test_saved_adapter_config_lists_targets_in_sorted_order(tiny_llama_dir, tmp_path):
    """peft stores target_modules as a set; saved in set order, adapter_config.json (and so the DVC
    hash of artifacts/lora) changed with PYTHONHASHSEED. Seven targets: a set comes out sorted by
    chance once in 5040 processes."""
    model, _tokenizer, family = load_model(tiny_llama_dir)
    targets = ["v_proj", "up_proj", "q_proj", "o_proj", "k_proj", "gate_proj", "down_proj"]
    attach_lora(model, family, r=2, alpha=4, dropout=0.0, targets=targets).save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"]
    assert saved == sorted(targets)
