"""The MLflow model: dialogues in, summaries out, loadable where only MLflow and a package index are.

`DialogueSummarizer` is what `mlflow models predict/serve` and `mlflow.pyfunc.load_model` run. It is
kept apart from registry.py so that loading a model imports only this module and summarizer.py's
dependencies (torch, transformers, peft, PyYAML, tqdm), not the registry's (filelock, the SQLite
store): the logged model carries this package as `code_paths`, and its requirements list exactly
what these imports need.

Where the base model comes from, in the order tried: the bundled folder (artifact `base_model`),
else the logged reference (`base_model`, a Hub id, with `base_model_revision`, the commit it
resolved to at fetch time). The adapters are artifacts. Precision (`auto`) resolves on the machine
that loads the model.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd

from detoxsum.models.summarizer import GenerationSettings, load_summarizer

INPUT_COLUMN = "dialogue"
OUTPUT_COLUMN = "summary"


class DialogueSummarizer(mlflow.pyfunc.PythonModel):
    """MLflow model: a DataFrame with a `dialogue` column (or a list of strings) in, one summary per
    row out."""

    def load_context(self, context) -> None:
        config = context.model_config
        base_model = context.artifacts.get("base_model", config["base_model"])
        revision = None if "base_model" in context.artifacts else config.get("base_model_revision")
        adapters = [context.artifacts[name] for name in config["adapters"]]
        self.summarizer = load_summarizer(base_model, adapters, GenerationSettings.from_dict(config["generation"]),
                                          revision=revision)

    # A DataFrame hint, not list[str]: MLflow would infer the signature from list[str] and drop the
    # explicit one's `show_progress` param; its schema enforcement hands over a DataFrame anyway.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        show_progress = bool((params or {}).get("show_progress", False))
        return self.summarizer.summarize(dialogues_of(model_input), show_progress=show_progress)


def dialogues_of(model_input: Any) -> list[str]:
    """The dialogues in a DataFrame (`dialogue` column, else the first), a list, or one string."""
    if hasattr(model_input, "columns"):  # a DataFrame, as MLflow's schema enforcement hands it over
        column = INPUT_COLUMN if INPUT_COLUMN in model_input.columns else model_input.columns[0]
        return [str(text) for text in model_input[column]]
    if isinstance(model_input, str):
        return [model_input]
    return [str(text) for text in model_input]
