import json

import pytest
import torch
from conftest import fixture_rows
from datasets import Dataset

from detoxsum.config import TrainLoraConfig
from detoxsum.data.features import tokenize_split
from detoxsum.errors import ParamsError, TrainingDiverged
from detoxsum.ppo.targets import top_layer_targets
from detoxsum.training.callbacks import DivergenceCallback, last_eval_loss, whole_run_loss
from detoxsum.training.lora import attach_lora, lora_targets, train_lora
from detoxsum.models.loading import load_model


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


class State:
    """The part of Trainer's state the callback reads: the step, and the log history it appends to."""

    def __init__(self, history=()):
        self.log_history = list(history)
        self.global_step = self.log_history[-1]["step"] if self.log_history else 0

    def log(self, callback, entry):
        self.global_step += 1
        self.log_history.append({**entry, "step": self.global_step})
        callback.on_log(None, self, None, logs=entry)


@pytest.mark.parametrize(("logs", "message"), [
    ([{"loss": 2.5}, {"loss": float("nan")}], r"step 2: loss is nan"),
    ([{"loss": 2.5, "grad_norm": float("inf")}], r"step 1: grad_norm is inf"),
    ([{"loss": 2.5}, {"loss": 2.1}, {"loss": 10.8}], r"step 3: loss 10.8, up from 2.5"),
])
def test_divergence_stops_training_naming_the_step_and_the_learning_rate(logs, message):
    callback, state = DivergenceCallback(lr=1000.0), State()
    with pytest.raises(TrainingDiverged, match=message + r".*lower train_lora\.lr \(now 1000\)"):
        for entry in logs:
            state.log(callback, entry)


def test_a_resumed_run_compares_its_loss_with_the_start_of_the_run():
    state = State([{"loss": 2.5, "step": 1}, {"loss": 2.4, "step": 2}])  # from the checkpoint
    with pytest.raises(TrainingDiverged, match=r"step 3: loss 9, up from 2.5"):
        state.log(DivergenceCallback(lr=1.0), {"loss": 9.0})


def test_a_noisy_but_healthy_loss_is_not_divergence():
    callback, state = DivergenceCallback(lr=1e-3), State()
    for loss in [0.02, 0.05, 0.9, 2.0, 1.5]:  # 100x a tiny start, but < 2 nats up
        state.log(callback, {"loss": loss, "grad_norm": 3.0})


def test_whole_run_loss_weights_each_logged_window_by_its_steps():
    history = [{"loss": 4.0, "step": 3}, {"eval_loss": 9.0, "step": 3}, {"loss": 1.0, "step": 4}]
    assert whole_run_loss(history) == pytest.approx((4.0 * 3 + 1.0) / 4)


def test_the_final_validation_loss_is_the_one_logged_at_the_last_step_if_any():
    history = [{"loss": 4.0, "step": 3}, {"eval_loss": 9.0, "step": 3}, {"loss": 1.0, "step": 4}]
    assert last_eval_loss(history, 3) == 9.0
    assert last_eval_loss(history, 4) is None  # not evaluated at step 4: train_lora evaluates once more


def test_a_huge_learning_rate_fails_train_lora_before_any_adapter_exists(tiny_model_dir, tmp_path):
    """Tiny random models saturate rather than blow up; 1e38 overflows float32 within two Adam steps."""
    model, tokenizer, family = load_model(tiny_model_dir)
    features = tokenize_split(Dataset.from_list(fixture_rows(8)), tokenizer, family,
                              "Summarize: {dialogue}\nSummary:", 64, 16)
    cfg = TrainLoraConfig(r=4, alpha=8, dropout=0.0, lr=1e38, epochs=1, max_steps=6, batch_size=4,
                          logging_steps=1, eval_steps=100)
    with pytest.raises(TrainingDiverged, match=r"train_lora diverged at step [1-6]: .* is nan; lower train_lora\.lr \(now 1e\+38\)"):
        train_lora(model, tokenizer, family, features, features, cfg, seed=0, precision="fp32", work_dir=tmp_path)


def test_saved_adapter_config_lists_targets_in_sorted_order(tiny_llama_dir, tmp_path):
    """peft stores target_modules as a set; saved in set order, adapter_config.json (and so the DVC
    hash of artifacts/lora) changed with PYTHONHASHSEED. Seven targets: a set comes out sorted by
    chance once in 5040 processes."""
    model, _tokenizer, family = load_model(tiny_llama_dir)
    targets = ["v_proj", "up_proj", "q_proj", "o_proj", "k_proj", "gate_proj", "down_proj"]
    attach_lora(model, family, r=2, alpha=4, dropout=0.0, targets=targets).save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"]
    assert saved == sorted(targets)


def test_summary_logits_collator_gives_the_full_length_loss_from_the_summary_positions_only(tiny_llama_dir):
    from transformers import DataCollatorForSeq2Seq

    from detoxsum.training.lora import SummaryLogitsCollator, training_collator

    model, tokenizer, family = load_model(tiny_llama_dir, no_dropout=True)
    model = attach_lora(model, family, r=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj"])
    rows = fixture_rows(4)
    features = [family.training_features(tokenizer, f"Summarize: {row['dialogue']}", row["summary"], 16)
                for row in rows]
    assert len({len(row["input_ids"]) for row in features}) > 1  # rows of different lengths: padding matters
    full = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100, padding=True)(features)
    cut = SummaryLogitsCollator(tokenizer.pad_token_id)(features)
    assert isinstance(training_collator(model, tokenizer, family, "lora"), SummaryLogitsCollator)
    assert not isinstance(training_collator(model, tokenizer, family, "prompt_tuning"), SummaryLogitsCollator)
    width = full["input_ids"].shape[1]
    longest_summary = max(sum(label != -100 for label in row["labels"]) for row in features)
    assert cut["logits_to_keep"] == longest_summary + 1 < width
    expected = model(**full)
    outputs = model(**cut)
    assert outputs.logits.shape[1] == cut["logits_to_keep"]
    torch.testing.assert_close(outputs.loss, expected.loss, rtol=1e-5, atol=1e-6)
    expected.loss.backward()
    full_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    outputs.loss.backward()
    for full_grad, p in zip(full_grads, [p for p in model.parameters() if p.requires_grad]):
        torch.testing.assert_close(p.grad, full_grad, rtol=1e-4, atol=1e-6)
