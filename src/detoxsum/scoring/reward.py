"""Toxicity scorers behind one interface: `score(texts) -> list[float]`, probabilities in [0, 1].

- `profanity-check` (alt-profanity-check): a small sklearn model shipped on PyPI; offline default.
- `hf`: any Hugging Face sequence classifier by Hub id or local path; the score is the softmax
  probability of the configured label (e.g. `hate` for facebook/roberta-hate-speech-dynabench-r4-target).
- `hatesonar`: an ONNX TF-IDF + logistic regression model trained on Davidson et al. (2017); the
  score is P(hate_speech) + P(offensive_language). Offline, and independent of profanity-check.
- `embedding-probe`: MiniLM sentence embeddings with a logistic regression fitted on labelled lines
  (scoring/embedding_probe.py); the score is P(insult).
- `tox-block`: a bidirectional LSTM trained on Jigsaw's toxic comments, rebuilt in torch
  (scoring/tox_block.py); the score is the probability of one of its six labels. Offline; it reads
  word order, so it scores insults that are not swear words ("a scumbag", "a petty jerk").

PPO's reward model (`build_reward_model`) sits on the same scorers but returns a tensor from
`rewards(texts)`, higher meaning less toxic.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from detoxsum.config import PROBE_ENCODER, ClassifierSpec, RewardSpec
from detoxsum.errors import ModelLoadError, ParamsError
from detoxsum.precision import default_device
from detoxsum.scoring.embedding_probe import EmbeddingProbeScorer
from detoxsum.scoring.tox_block import ToxBlockScorer


class ToxicityScorer(Protocol):
    name: str

    def score(self, texts: list[str]) -> list[float]: ...


class ProfanityCheckScorer:
    def __init__(self, name: str = "profanity_check"):
        from profanity_check import predict_prob

        self.name = name
        self._predict_prob = predict_prob

    def score(self, texts: list[str]) -> list[float]:
        if not texts:
            return []
        return [float(p) for p in self._predict_prob(list(texts))]


class HFClassifierScorer:
    def __init__(self, name: str, model: str, label: str, batch_size: int = 32):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name = name
        self.batch_size = batch_size
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            # on the GPU when there is one: a transformer classifier scores every PPO batch
            self.model = AutoModelForSequenceClassification.from_pretrained(model).eval().to(default_device())
        except OSError as exc:
            raise ModelLoadError(f"classifier {name}: cannot load {model!r} ({str(exc).splitlines()[0]})") from exc
        labels = {str(v).lower(): int(k) for k, v in self.model.config.id2label.items()}
        if label.lower() not in labels:
            raise ParamsError(f"classifier {name}.label: {label!r} not among {sorted(labels)}")
        self.label_index = labels[label.lower()]

    def logits(self, texts: list[str]) -> torch.Tensor:
        chunks = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[start : start + self.batch_size], padding=True, truncation=True,
                                       max_length=512, return_tensors="pt").to(self.model.device)
                chunks.append(self.model(**batch).logits.float().cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0, self.model.config.num_labels)

    def score(self, texts: list[str]) -> list[float]:
        return self.logits(list(texts)).softmax(-1)[:, self.label_index].tolist()


# The tensor behind hatesonar's `output_probability`, whose ZipMap turns it into one dict per text;
# its columns follow hatesonar.api.Sonar.mapping: hate_speech, offensive_language, neither.
HATESONAR_PROBABILITIES = "probabilities"
HATESONAR_NEITHER = 2
# onnxruntime builds the StringNormalizer's locale, en_US.UTF-8 when the model names none (hatesonar's
# does not), and fails to load where that locale is not generated, as in slim images. C.UTF-8 is
# built into glibc; the locale only governs lower-casing, and the tokenizer keeps ASCII words only.
HATESONAR_LOCALE = "C.UTF-8"


def load_hatesonar_session():
    """hatesonar's packaged model as an onnxruntime session, with the locale set and the class
    probabilities exposed as one (n_texts, 3) tensor. The file on disk is left as it is."""
    import onnx
    import onnxruntime
    from hatesonar.api import DEFAULT_MODEL_FILE

    model = onnx.load(DEFAULT_MODEL_FILE)
    for node in model.graph.node:
        if node.op_type == "StringNormalizer":
            kept = [attribute for attribute in node.attribute if attribute.name != "locale"]
            del node.attribute[:]
            node.attribute.extend(kept + [onnx.helper.make_attribute("locale", HATESONAR_LOCALE)])
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(HATESONAR_PROBABILITIES, onnx.TensorProto.FLOAT, [None, 3]))
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


class HateSonarScorer:
    """toxicity(text) = P(hate_speech) + P(offensive_language) = 1 - P(neither), from hatesonar.

    All texts go through one session run. The model is a sparse (L1) logistic regression over
    words: a text without any of its ~300 weighted words gets the class prior, 0.33, not 0.
    """

    def __init__(self, name: str = "hatesonar"):
        self.name = name
        try:
            self._session = load_hatesonar_session()
        except Exception as exc:  # onnxruntime's errors derive from Exception alone
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ModelLoadError(f"classifier {name}: hatesonar cannot load offline ({reason})") from exc

    def score(self, texts: list[str]) -> list[float]:
        if not texts:
            return []
        inputs = {"text": np.array(list(texts), dtype=object)}
        (probabilities,) = self._session.run([HATESONAR_PROBABILITIES], inputs)
        return np.clip(1.0 - probabilities[:, HATESONAR_NEITHER], 0.0, 1.0).tolist()


# A word: letters, digits and apostrophes ("freeloader", "don't", "#Person1#" gives "Person1").
WORD = re.compile(r"[A-Za-z0-9']+")


class WorstWordScorer:
    """toxicity(text) = the highest toxicity among its words, each word scored on its own.

    A bag-of-words classifier such as profanity-check scores a rude word lower the more neutral words
    surround it, and PPO against it learns that: "#Person1# is a lazy freeloader who's stuck with
    #Person2#…" scored 0.47, the PPO summary "#Person1# is a lazy freeloader who has been stuck-up and
    has no plans to work with #Person2#." 0.12, both 0.67 here ("lazy"). As a second evaluation
    classifier it shows how much of a detox is such padding. Each distinct word is scored once.
    """

    def __init__(self, inner: ToxicityScorer, name: str):
        self.inner, self.name = inner, name

    def score(self, texts: list[str]) -> list[float]:
        words = [WORD.findall(text) or [text] for text in texts]
        distinct = sorted({word for text_words in words for word in text_words})
        word_toxicity = dict(zip(distinct, self.inner.score(distinct)))
        return [max(word_toxicity[word] for word in text_words) for text_words in words]


def build_scorer(spec: ClassifierSpec) -> ToxicityScorer:
    if spec.kind == "profanity-check":
        scorer: ToxicityScorer = ProfanityCheckScorer(spec.name)
    elif spec.kind == "hatesonar":
        scorer = HateSonarScorer(spec.name)
    elif spec.kind == "tox-block":
        scorer = ToxBlockScorer(spec.name, spec.label)
    elif spec.kind == "embedding-probe":
        scorer = EmbeddingProbeScorer(spec.name, spec.model or PROBE_ENCODER, Path(spec.train_file))
    else:
        scorer = HFClassifierScorer(spec.name, spec.model, spec.label)
    return WorstWordScorer(scorer, spec.name) if spec.score_by == "worst_word" else scorer


# --- PPO reward models ---------------------------------------------------------------------------


class RewardModel(Protocol):
    def rewards(self, texts: list[str]) -> torch.Tensor: ...


class ProfanityReward:
    """reward = -P(toxic) from profanity-check, in [-1, 0]."""

    def __init__(self):
        self.scorer = ProfanityCheckScorer()

    def rewards(self, texts: list[str]) -> torch.Tensor:
        return -torch.tensor(self.scorer.score(list(texts)), dtype=torch.float32)


class ToxBlockReward:
    """reward = -P(label) (`output: prob`), in [-1, 0], or the log-odds against the label,
    log(1 - p) - log(p) (`log_odds`, `logit`), for tox-block's toxicity `label` (e.g. insult)."""

    def __init__(self, label: str, output: str):
        self.scorer = ToxBlockScorer("reward", label, owner="train_ppo.reward")
        self.output = output

    def rewards(self, texts: list[str]) -> torch.Tensor:
        probability = torch.tensor(self.scorer.score(list(texts)), dtype=torch.float32)
        if self.output == "prob":
            return -probability
        return -torch.logit(probability, eps=1e-6)


class ClassifierLabelReward:
    """reward = the log-odds (or logit, or softmax probability) of a non-toxic label of a Hugging
    Face classifier.

    Log-odds is the default: unlike a probability it does not saturate, so the policy still gets a
    signal on texts the classifier already calls non-toxic; and unlike one raw logit it is what the
    classifier's decision rests on (softmax ignores a shift of all logits, one logit does not).
    """

    def __init__(self, model: str, label: str, output: str = "log_odds"):
        self.scorer = HFClassifierScorer("reward", model, label)
        self.output = output

    def rewards(self, texts: list[str]) -> torch.Tensor:
        logits = self.scorer.logits(list(texts))
        return label_reward(logits, self.scorer.label_index, self.output)


def label_reward(logits: torch.Tensor, label_index: int, output: str) -> torch.Tensor:
    """One reward per row of classifier logits [B, labels] for the label at `label_index`."""
    if output == "prob":
        return logits.softmax(-1)[:, label_index]
    if output == "logit":
        return logits[:, label_index]
    others = torch.cat([logits[:, :label_index], logits[:, label_index + 1:]], dim=1)
    return logits[:, label_index] - torch.logsumexp(others, dim=1)  # log p(label) - log p(not label)


# A sentence ends at ., ! or ? followed by whitespace, or at a line break. A regex rather than a
# sentence tokenizer: summaries are short, plain prose, and a miss only merges two sentences.
SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """The non-empty sentences of `text`; the stripped text itself when it has no break."""
    sentences = [part.strip() for part in SENTENCE_BREAK.split(text) if part.strip()]
    return sentences or [text.strip()]


class WorstSentenceReward:
    """reward(text) = min over its sentences of the inner model's reward.

    Bag-of-words classifiers such as profanity-check score a text lower the more neutral words
    surround a toxic one ("calls #Person2# an idiot." 0.999; the same plus one neutral clause,
    0.738), so against a whole-summary score PPO can lower the reward model's toxicity by writing
    longer summaries, which costs ROUGE. Taking the worst sentence removes that route: only
    changing the offending sentence raises the reward.
    """

    def __init__(self, inner: RewardModel):
        self.inner = inner

    def rewards(self, texts: list[str]) -> torch.Tensor:
        per_text = [split_sentences(text) for text in texts]
        owners = torch.tensor([index for index, sentences in enumerate(per_text) for _ in sentences])
        sentence_rewards = self.inner.rewards([s for sentences in per_text for s in sentences]).float()
        worst = torch.full((len(texts),), float("inf"))
        return worst.scatter_reduce(0, owners, sentence_rewards, reduce="amin")


def build_reward_model(spec: RewardSpec) -> RewardModel:
    if spec.kind == "profanity-check":
        model: RewardModel = ProfanityReward()
    elif spec.kind == "tox-block":
        model = ToxBlockReward(spec.label, spec.output)
    else:
        model = ClassifierLabelReward(spec.model, spec.label, spec.output)
    return WorstSentenceReward(model) if spec.score_by == "worst_sentence" else model
