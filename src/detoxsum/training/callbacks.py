"""Trainer callbacks: DVCLive curves on the optimizer step, and stopping a run that diverges."""

from __future__ import annotations

import math
from collections.abc import Callable

from dvclive import Live
from transformers import (
    TrainerCallback,
)
from transformers.integrations import DVCLiveCallback

from detoxsum.errors import TrainingDiverged


class StepAlignedDVCLiveCallback(DVCLiveCallback):
    """DVCLive logging whose x axis is the trainer's global step, opened only when training begins.

    The stock callback advances DVCLive's step once per log call, so train and eval points logged
    at the same optimizer step land on different x values; pinning the step keeps curves aligned.
    `open_live` opens it when training begins (the stage gives it a temporary folder that replaces
    the tracked curves only once the adapter is written, `outputs.open_live`). A resumed run opens
    a fresh `Live` and replays the checkpoint's log history into it.
    """

    def __init__(self, open_live: Callable[[], Live]):
        super().__init__()
        self.open_live = open_live

    def setup(self, args, state, model):
        opening = state.is_world_process_zero and self.live is None
        if opening:
            self.live = self.open_live()
        super().setup(args, state, model)
        if opening:
            self.replay(args, state, state.log_history)

    def replay(self, args, state, log_history):
        """Log again what a resumed run's checkpoint remembers (its `log_history`), so the curves
        are those of an uninterrupted run, without the steps the killed run logged after it."""
        for entry in log_history:
            logs = {key: value for key, value in entry.items() if key != "step"}
            self.live.step = entry["step"]
            super().on_log(args, state, None, logs=logs)

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        if self.live is not None:
            self.live.step = state.global_step
        if logs and "train_loss" in logs:  # Trainer's covers only the steps since a resume
            logs = {**logs, "train_loss": whole_run_loss(state.log_history)}
        super().on_log(args, state, control, model=model, logs=logs, **kwargs)


def last_eval_loss(log_history: list[dict], step: int) -> float | None:
    """The validation loss Trainer logged at `step`, if it evaluated there: evaluating the same
    weights again after training would only repeat it (a pass over the validation split)."""
    for entry in reversed(log_history):
        if "eval_loss" in entry and entry.get("step") == step:
            return entry["eval_loss"]
    return None


def whole_run_loss(log_history: list[dict]) -> float:
    """The mean training loss over every step of the run, from the logged window means.

    Trainer's own `training_loss` averages only the steps of the current `train()` call, so after a
    resume it would leave out the steps before the checkpoint.
    """
    total, last_step = 0.0, 0
    for entry in log_history:
        if "loss" in entry:
            total += entry["loss"] * (entry["step"] - last_step)
            last_step = entry["step"]
    return total / last_step if last_step else float("nan")


class DivergenceCallback(TrainerCallback):
    """Stops training with `TrainingDiverged` when a logged loss or gradient norm is NaN/inf, or the
    training loss runs far above the first one logged: more than 3x it and at least 2 nats above
    (a loss of ln(vocabulary) means the model predicts uniformly). Nothing is saved after that, so
    no adapter of a diverged run reaches `artifacts/`."""

    RATIO, MARGIN = 3.0, 2.0

    def __init__(self, lr: float):
        self.lr, self.first_loss = lr, None

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        for key in ("loss", "grad_norm", "eval_loss"):
            value = logs.get(key)
            if value is not None and not math.isfinite(value):
                self.fail(state.global_step, f"{key} is {value}")
        loss = logs.get("loss")
        if loss is None:
            return
        if self.first_loss is None:  # from the history, so a resumed run compares with the real start
            self.first_loss = next(entry["loss"] for entry in state.log_history if "loss" in entry)
        if loss > max(self.RATIO * self.first_loss, self.first_loss + self.MARGIN):
            self.fail(state.global_step, f"loss {loss:.4g}, up from {self.first_loss:.4g} at the start")

    def fail(self, step: int, what: str) -> None:
        raise TrainingDiverged(f"train_lora diverged at step {step}: {what}; lower train_lora.lr "
                               f"(now {self.lr:g}); no adapter was written")
