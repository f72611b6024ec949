"""train_lora's methods (LoRA, QLoRA, prompt tuning, full fine-tuning) set up on a model and
trained with transformers' Trainer."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from transformers import (
    AutoConfig,
    DataCollatorForSeq2Seq,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
)

from detoxsum.checkpoints import last_trainer_checkpoint
from detoxsum.config import TrainLoraConfig
from detoxsum.errors import ModelLoadError, ParamsError, first_line
from detoxsum.models.family import IGNORE_INDEX, Family
from detoxsum.models.loading import device, load_model, save_model
from detoxsum.precision import resolve_for_model
from detoxsum.training.callbacks import DivergenceCallback, last_eval_loss, whole_run_loss
from detoxsum.training.qlora import keep_4bit_weights_unpacked, nf4_config, require_4bit_kernels

# Attention query/value projections per architecture (the LoRA paper's default placement,
# Hu et al. 2021, section 7.1).
DEFAULT_TARGETS = {
    "t5": ["q", "v"],
    "mt5": ["q", "v"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "bart": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
}


def lora_targets(model, configured: list[str] | None) -> list[str]:
    """The configured target modules, checked against the model, or the architecture default."""
    targets = configured or DEFAULT_TARGETS.get(model.config.model_type)
    if not targets:
        raise ParamsError(
            f"train_lora.target_modules: no default for model type {model.config.model_type!r}; set it in params.yaml"
        )
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [target for target in targets if target not in leaf_names]
    if missing:
        raise ParamsError(f"train_lora.target_modules: {missing} not found in {model.config.model_type} model")
    return list(targets)


def attach_lora(model, family: Family, r: int, alpha: int, dropout: float, targets: list[str]) -> PeftModel:
    """A fresh LoRA adapter on `targets`, whose saved adapter_config.json is the same on every run."""
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        task_type=TaskType[family.peft_task_type],
    )
    peft_model = get_peft_model(model, config)
    # peft keeps target_modules as a set and saves it in set order, which follows Python's per-process
    # string hashing: identical weights then got a new DVC hash on every run and reran evaluate and
    # register. The set is only read while the adapter is injected, so a sorted list is safe here.
    config.target_modules = sorted(config.target_modules)
    return peft_model


# The text whose token embeddings a soft prompt starts from (repeated to its length): Lester et al.
# 2021 found vocabulary-based initialisation better than random, and the task's own words are the
# most useful of those.
PROMPT_INIT_TEXT = "Summarize the following conversation in one or two sentences."


def attach_prompt(model, tokenizer, family: Family, num_virtual_tokens: int) -> PeftModel:
    """A fresh soft prompt of `num_virtual_tokens` embeddings, initialised to the token embeddings of
    PROMPT_INIT_TEXT. Done here rather than by peft's TEXT init, which records the tokenizer's path
    in adapter_config.json: the saved config would then differ between workspaces."""
    # One soft prompt, before the input: for T5 before the encoder's only, as Lester et al. tuned T5
    # (peft's default for encoder-decoders puts a second one before the decoder's input).
    config = PromptTuningConfig(task_type=TaskType[family.peft_task_type], num_virtual_tokens=num_virtual_tokens,
                                prompt_tuning_init=PromptTuningInit.RANDOM, num_transformer_submodules=1)
    peft_model = get_peft_model(model, config)
    words = model.get_input_embeddings().weight
    prompt = peft_model.prompt_encoder[peft_model.active_adapter].embedding.weight
    token_ids = tokenizer(PROMPT_INIT_TEXT, add_special_tokens=False)["input_ids"]
    token_ids = (token_ids * math.ceil(num_virtual_tokens / len(token_ids)))[:num_virtual_tokens]
    with torch.no_grad():
        prompt.copy_(words[torch.tensor(token_ids, device=words.device)].to(prompt.dtype))
    return peft_model


def prepare_for_method(model, tokenizer, family: Family, cfg: TrainLoraConfig) -> PeftModel | PreTrainedModel:
    """`model` made ready to train by `cfg.method`: with a fresh LoRA adapter (lora; qlora, on a
    4-bit model from `load_for_training`), a fresh soft prompt (prompt_tuning), or every weight
    trainable (full)."""
    if cfg.method == "full":
        model.requires_grad_(True)
        return model
    if cfg.method == "prompt_tuning":
        return attach_prompt(model, tokenizer, family, cfg.num_virtual_tokens)
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        # Norms and embeddings to float32 (they are not quantized); no gradient checkpointing: the
        # models here are small, and it would cost a second forward pass per step.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return attach_lora(model, family, cfg.r, cfg.alpha, cfg.dropout, lora_targets(model, cfg.target_modules))


class SummaryLogitsCollator:
    """Decoder-only training batches padded on the left, with logits asked for at the summary's
    positions only.

    A causal LM's loss needs the vocabulary projection only where a label is predicted: the
    summary's ~45 of ~280 positions in the default. Padded on the left, every row ends with its
    summary, so the last K positions (K: the batch's first labelled position to the end, plus the
    position that predicts it) hold every prediction the loss reads; `logits_to_keep=K` projects
    just those onto the vocabulary, and the labels are cut to the same K positions, which the
    model's loss shifts as it shifts full-length ones. Projecting every position was ~20 % of
    train_lora's FLOPs and a ~440 MB float32 logits tensor per step of 8. Position ids count real
    tokens only, so each token sits where right padding put it and the loss is the same.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(row["input_ids"]) for row in features)
        padded = {key: torch.tensor([[fill] * (width - len(row[key])) + list(row[key]) for row in features])
                  for key, fill in (("input_ids", self.pad_token_id), ("attention_mask", 0), ("labels", IGNORE_INDEX))}
        labelled = (padded["labels"] != IGNORE_INDEX).any(dim=0).nonzero()
        keep = width - int(labelled[0]) + 1 if len(labelled) else width
        mask = padded["attention_mask"]
        return {**padded, "labels": padded["labels"][:, -keep:], "logits_to_keep": keep,
                "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}


def training_collator(model, tokenizer, family: Family, method: str):
    """`SummaryLogitsCollator` where it applies: decoder-only models that take `logits_to_keep`,
    by a method that keeps the inputs as they are (a soft prompt adds positions and labels in front);
    else transformers' padding collator."""
    if family.name == "decoder-only" and method != "prompt_tuning" and model._supports_logits_to_keep():
        return SummaryLogitsCollator(tokenizer.pad_token_id)
    return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=IGNORE_INDEX, padding=True)


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters; peft's count, which counts a 4-bit weight's values, not its bytes."""
    if isinstance(model, PeftModel):
        return model.get_nb_trainable_parameters()
    parameters = list(model.parameters())
    return sum(p.numel() for p in parameters if p.requires_grad), sum(p.numel() for p in parameters)


def save_trained(model, tokenizer, out_dir: str | Path) -> None:
    """What loading needs: the adapter or soft prompt (peft's files) for a peft model; for `full`,
    the whole model in safetensors with its tokenizer, loadable as a base of its own."""
    if isinstance(model, PeftModel):
        model.save_pretrained(str(out_dir))
    else:
        save_model(model, tokenizer, out_dir)


def load_for_training(model_dir: str | Path, method: str, requested_precision: str):
    """The base model to tune by `method` on `device()`, with its tokenizer, family and the precision
    `requested_precision` (base.precision) resolves to there. For qlora the weights load quantized to
    4-bit NF4, after checking that the device has the kernels (before anything is loaded)."""
    if method != "qlora":
        model, tokenizer, family = load_model(model_dir)
        model.to(device())
        return model, tokenizer, family, resolve_for_model(requested_precision, model.config, model.device)
    require_4bit_kernels(device())
    try:
        config = AutoConfig.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{model_dir}: cannot load model config ({first_line(exc)}); run the fetch stage") from exc
    precision = resolve_for_model(requested_precision, config, device())
    model, tokenizer, family = load_model(model_dir, quantization_config=nf4_config(precision))
    keep_4bit_weights_unpacked(model)
    return model, tokenizer, family, precision


def train_lora(
    model,
    tokenizer,
    family: Family,
    train_set: Dataset,
    eval_set: Dataset,
    cfg: TrainLoraConfig,
    seed: int,
    precision: str,
    work_dir: Path,
    callbacks: list | None = None,
    processes: int = 1,
) -> tuple[PeftModel | PreTrainedModel, dict[str, float]]:
    """Tune `model` by `cfg.method` on tokenized features; returns what trained (a peft model with
    a fresh adapter or soft prompt, or `model` itself for `full`) and the final metrics.

    Checkpoints go to `work_dir` every `cfg.checkpoint_steps` steps (the last one kept); when
    `work_dir` already holds one, training continues from it, with the optimizer, scheduler, RNG
    states and data order restored, so it ends where an uninterrupted run would have.

    `precision` is a resolved one (`fp32`, `bf16`, `fp16`; see precision.py): Trainer's autocast,
    with loss scaling for fp16. Batches group dialogues of similar length, so less of each step is
    padding. `cfg.batch_size` is the batch of one optimizer step over all `processes` (data
    parallel, distributed.py), so N processes train the same steps as one, N times wider.
    """
    if cfg.batch_size % processes:
        raise ParamsError(f"params key 'train_lora.batch_size' ({cfg.batch_size}) must be divisible by "
                          f"base.num_processes ({processes})")
    trained = prepare_for_method(model, tokenizer, family, cfg)
    args = TrainingArguments(
        output_dir=str(work_dir),
        per_device_train_batch_size=cfg.batch_size // processes,
        per_device_eval_batch_size=cfg.batch_size // processes,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.checkpoint_steps,
        save_total_limit=1,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),  # transformers requires it for bf16 on a CPU
        train_sampling_strategy="group_by_length",
        seed=seed,
        data_seed=seed,
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    trainer = Trainer(
        model=trained,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=training_collator(model, tokenizer, family, cfg.method),
        processing_class=tokenizer,
        callbacks=[DivergenceCallback(cfg.learning_rate), *(callbacks or [])],
    )
    resume = last_trainer_checkpoint(work_dir)
    if resume:
        print(f"train_lora: resuming from {resume}")
    result = trainer.train(resume_from_checkpoint=resume)
    final_loss = last_eval_loss(trainer.state.log_history, trainer.state.global_step)
    if final_loss is None:  # the last step was not an evaluation step
        final_loss = trainer.evaluate()["eval_loss"]
    trainable, total = parameter_counts(trained)
    metrics = {
        "method": cfg.method,
        "lr": cfg.learning_rate,
        "train_loss": round(whole_run_loss(trainer.state.log_history), 4),
        "eval_loss": round(float(final_loss), 4),
        "train_runtime_s": round(float(result.metrics["train_runtime"]), 1),
        "steps": int(result.global_step),
        "trainable_params": int(trainable),
        "total_params": int(total),
    }
    return trained, metrics
