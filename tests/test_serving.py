"""The MLflow model object: where it takes the base model from, and what input it accepts."""

from types import SimpleNamespace

import pandas as pd
import pytest

from detoxsum.ship import serving
from detoxsum.ship.serving import DialogueSummarizer, dialogues_of

GENERATION = {"prompt": "{dialogue}", "max_source_tokens": 8, "max_new_tokens": 2, "batch_size": 1, "num_beams": 1}


@pytest.fixture
def loads(monkeypatch):
    calls = []
    monkeypatch.setattr(serving, "load_summarizer",
                        lambda base, adapters, settings, revision=None: calls.append((base, adapters, revision)))
    return calls


def context(artifacts: dict, revision: str | None):
    config = {"base_model": "google/flan-t5-base", "base_model_revision": revision, "adapters": ["lora"],
              "generation": GENERATION}
    return SimpleNamespace(model_config=config, artifacts={"lora": "/m/lora", **artifacts})


def test_a_referenced_hub_base_loads_at_its_recorded_commit(loads):
    DialogueSummarizer().load_context(context({}, "a" * 40))
    assert loads == [("google/flan-t5-base", ["/m/lora"], "a" * 40)]


def test_a_bundled_base_is_loaded_from_the_model_itself(loads):
    DialogueSummarizer().load_context(context({"base_model": "/m/base_model"}, "a" * 40))
    assert loads == [("/m/base_model", ["/m/lora"], None)]


def test_dialogues_come_from_the_dialogue_column_a_list_or_one_string():
    frame = pd.DataFrame({"id": ["1", "2"], "dialogue": ["a: hi", "b: yo"]})
    assert dialogues_of(frame) == ["a: hi", "b: yo"]
    assert dialogues_of(["a: hi"]) == ["a: hi"] and dialogues_of("a: hi") == ["a: hi"]
