"""tox-block (PyPI `tox-block==0.1.2`, MIT): a bidirectional LSTM over word vectors, trained on
Jigsaw's Toxic Comment data (CC0), with six sigmoid labels: toxic, severe_toxic, obscene, threat,
insult, identity_hate. Unlike a bag of words it reads word order, and on the calibrate stage's
dialogue lines its `insult` label ranks insults above clean lines far better than profanity-check.

The package runs its network under TensorFlow (~600 MB) for a model of 1.1 M parameters, and no
maintained library loads a Keras h5 file into torch, so the network is rebuilt here from the
package's own files: the Keras weights (read with h5py) and the word index of its pickled
tokenizer (read by an unpickler that builds plain objects and refuses any other class). The
rebuild keeps what the trained weights assume: lower-cased words split as keras-preprocessing
splits them, only the 20,000 most frequent kept, the last 100 words, padded in front with index 0
(embedded like any word: the model was trained so), LSTM gates through tf.keras 2.2's hard sigmoid
(clip(0.2 x + 0.5, 0, 1)), and a max over time of both directions. tests/test_tox_block.py checks
the probabilities against the package's own under TensorFlow (tests/data/tox_block_reference.json).
"""

from __future__ import annotations

import functools
import pickle
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import torch
from torch import nn

from detoxsum.config import TOX_BLOCK_LABELS as LABELS
from detoxsum.errors import ModelLoadError, first_line

VERSION = "0.1.2"
WORDS_KEPT = 20_000  # the tokenizer's num_words: indices from 1 to 19,999
SEQUENCE_LENGTH = 100  # the network's input: the last 100 known words, zeros in front
UNITS = 50  # per LSTM direction
# Texts per forward pass: the input projections of a chunk take 2 x chunk x 100 x 200 floats.
CHUNK = 256


@dataclass(frozen=True)
class ToxBlockFiles:
    weights: Path
    tokenizer: Path

    @classmethod
    def installed(cls) -> ToxBlockFiles:
        """The trained files of the installed tox-block package, located without importing it."""
        spec = find_spec("tox_block")
        if spec is None or spec.origin is None:
            raise ModelLoadError(f"tox-block is not installed (pip install --no-deps tox-block=={VERSION})")
        folder = Path(spec.origin).parent / "trained_models"
        files = cls(folder / f"lstm_model_{VERSION}.h5", folder / f"encoder_{VERSION}.pkl")
        for path in (files.weights, files.tokenizer):
            if not path.is_file():
                raise ModelLoadError(f"tox-block: {path} is missing (tox-block=={VERSION} ships it)")
        return files


class _PlainObject:
    """Stands in for the pickled keras-preprocessing Tokenizer and tox-block TokenSequencer: pickle
    restores their attributes onto it, and no code of theirs runs."""


class _TokenizerUnpickler(pickle.Unpickler):
    PLAIN = frozenset({("keras_preprocessing.text", "Tokenizer"),
                       ("tox_block.data_processing.preprocessors", "TokenSequencer")})
    ALLOWED = frozenset({("collections", "defaultdict"), ("collections", "OrderedDict"), ("builtins", "int")})

    def find_class(self, module: str, name: str):
        if (module, name) in self.PLAIN:
            return type(name, (_PlainObject,), {})
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name}")


class WordEncoder:
    """Texts to the network's input, as keras-preprocessing's Tokenizer.texts_to_sequences and
    pad_sequences(maxlen=100) do: words not among the 20,000 kept are dropped."""

    def __init__(self, word_index: dict[str, int], filters: str):
        self.word_index = {word: index for word, index in word_index.items() if index < WORDS_KEPT}
        self.separators = str.maketrans({character: " " for character in filters})

    @classmethod
    def from_pickle(cls, path: Path) -> WordEncoder:
        with path.open("rb") as handle:
            sequencer = _TokenizerUnpickler(handle).load()
        tokenizer = sequencer.tokenizer
        return cls(dict(tokenizer.word_index), tokenizer.filters)

    def word_ids(self, text: str) -> list[int]:
        words = text.lower().translate(self.separators).split(" ")
        return [self.word_index[word] for word in words if word in self.word_index]

    def encode(self, texts: list[str]) -> torch.Tensor:
        rows = torch.zeros(len(texts), SEQUENCE_LENGTH, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.word_ids(text)[-SEQUENCE_LENGTH:]
            if ids:
                rows[row, SEQUENCE_LENGTH - len(ids):] = torch.tensor(ids)
        return rows


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """tf.keras 2.2's recurrent activation, which the LSTM was trained with (not torch's sigmoid)."""
    return (0.2 * x + 0.5).clamp(0.0, 1.0)


class BiLstmToxicity(nn.Module):
    """Embedding(20000, 50) -> BiLSTM(50 + 50) -> max over time -> Dense(50, relu) -> Dense(6, sigmoid)."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(WORDS_KEPT, 50)
        # Per direction (forward, backward), Keras's layout: gates i, f, c, o side by side.
        self.input_kernel = nn.Parameter(torch.zeros(2, 50, 4 * UNITS))
        self.recurrent_kernel = nn.Parameter(torch.zeros(2, UNITS, 4 * UNITS))
        self.gate_bias = nn.Parameter(torch.zeros(2, 4 * UNITS))
        self.hidden = nn.Linear(2 * UNITS, 50)
        self.out = nn.Linear(50, len(LABELS))

    @classmethod
    def from_keras_h5(cls, path: Path) -> BiLstmToxicity:
        import h5py

        net = cls()
        with h5py.File(path, "r") as h5:
            weights = h5["model_weights"]

            def read(name: str) -> torch.Tensor:
                return torch.from_numpy(weights[name][()])

            lstm = "bidirectional/bidirectional/{}_lstm/{}:0"
            with torch.no_grad():
                net.embedding.weight.copy_(read("embedding/embedding/embeddings:0"))
                for direction, name in enumerate(("forward", "backward")):
                    net.input_kernel[direction].copy_(read(lstm.format(name, "kernel")))
                    net.recurrent_kernel[direction].copy_(read(lstm.format(name, "recurrent_kernel")))
                    net.gate_bias[direction].copy_(read(lstm.format(name, "bias")))
                net.hidden.weight.copy_(read("dense/dense/kernel:0").T)
                net.hidden.bias.copy_(read("dense/dense/bias:0"))
                net.out.weight.copy_(read("dense_1/dense_1/kernel:0").T)
                net.out.bias.copy_(read("dense_1/dense_1/bias:0"))
        return net.eval()

    def forward(self, word_ids: torch.Tensor) -> torch.Tensor:
        """Probabilities [texts, 6] for word ids [texts, 100]."""
        vectors = self.embedding(word_ids)
        # Both directions in one loop: the backward LSTM reads the reversed sequence. Max-pooling
        # over time makes the order its outputs are stored in irrelevant.
        both = torch.stack([vectors, vectors.flip(1)])
        projected = torch.einsum("dnte,deg->dntg", both, self.input_kernel) + self.gate_bias[:, None, None]
        state = torch.zeros(2, len(word_ids), UNITS)
        cell = torch.zeros_like(state)
        pooled = torch.full_like(state, float("-inf"))
        for step in range(word_ids.shape[1]):
            gates = projected[:, :, step] + torch.bmm(state, self.recurrent_kernel)
            inp, forget, candidate, out = gates.split(UNITS, dim=-1)
            cell = hard_sigmoid(forget) * cell + hard_sigmoid(inp) * torch.tanh(candidate)
            state = hard_sigmoid(out) * torch.tanh(cell)
            pooled = torch.maximum(pooled, state)
        features = torch.relu(self.hidden(torch.cat([pooled[0], pooled[1]], dim=-1)))
        return torch.sigmoid(self.out(features))


class ToxBlock:
    """The six label probabilities of each text."""

    def __init__(self, files: ToxBlockFiles | None = None):
        files = files or ToxBlockFiles.installed()
        self.encoder = WordEncoder.from_pickle(files.tokenizer)
        self.net = BiLstmToxicity.from_keras_h5(files.weights)

    @torch.no_grad()
    def probabilities(self, texts: list[str]) -> torch.Tensor:
        chunks = [self.net(self.encoder.encode(texts[start:start + CHUNK])) for start in range(0, len(texts), CHUNK)]
        return torch.cat(chunks) if chunks else torch.zeros(0, len(LABELS))


@functools.lru_cache(maxsize=1)
def installed_tox_block() -> ToxBlock:
    """One tox-block per process: calibrate uses it as a judge and as PPO's reward, and each load
    reads the 16 MB word index again. Read-only once built, so the scorers can share it."""
    return ToxBlock()


def load_tox_block(owner: str) -> ToxBlock:
    """tox-block, or one error line naming the params entry (`owner`) that asked for it."""
    try:
        return installed_tox_block()
    except (ModelLoadError, OSError, pickle.UnpicklingError, KeyError, ImportError) as exc:
        raise ModelLoadError(f"{owner}: tox-block cannot load ({first_line(exc)})") from exc


class ToxBlockScorer:
    """toxicity(text) = tox-block's probability of one label (`insult`, `toxic`, ...)."""

    def __init__(self, name: str, label: str, owner: str | None = None):
        self.name = name
        self.label_index = LABELS.index(label)
        self.model = load_tox_block(owner or f"classifier {name}")

    def score(self, texts: list[str]) -> list[float]:
        return self.model.probabilities(list(texts))[:, self.label_index].tolist()
