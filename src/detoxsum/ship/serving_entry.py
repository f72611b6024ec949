"""The file MLflow logs as the model's code (models-from-code): it names the model object, so the
logged model is this source plus `code_paths`, never a pickle tied to one Python and cloudpickle.
Importing it has one effect, `mlflow.models.set_model`; only `log_model` and MLflow's loader do."""

import mlflow

from detoxsum.ship.serving import DialogueSummarizer

mlflow.models.set_model(DialogueSummarizer())
