"""Where training stages keep checkpoints so that a killed run continues instead of starting over.

`checkpoints/<stage>/<fingerprint>/` sits outside every DVC output (DVC deletes a stage's outputs
before it reruns the stage) and outside git (`.gitignore`). The fingerprint hashes everything the
run's result depends on (its params, its input data's fingerprint, the base model's config), so a
checkpoint is only resumed by the run that wrote it: change a param and the next run starts fresh.
A stage removes its checkpoints once its outputs are written, and older fingerprints' folders when
it starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (dataclasses given as their `__dict__`)."""
    payload = json.dumps([getattr(part, "__dict__", part) for part in parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def folder_digest(folder: Path) -> str:
    """A hash of every file's name and bytes under `folder` (an input the run's result depends on)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def checkpoint_dir(stage: str, run_fingerprint: str, root: Path) -> Path:
    """This run's checkpoint folder (created), after removing other runs' folders of the stage."""
    stage_dir = root / stage
    if stage_dir.is_dir():
        for other in stage_dir.iterdir():
            if other.name != run_fingerprint:
                shutil.rmtree(other, ignore_errors=True)
    folder = stage_dir / run_fingerprint
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def discard(folder: Path) -> None:
    """Remove a finished run's checkpoints, and the stage and root folders when left empty."""
    shutil.rmtree(folder, ignore_errors=True)
    for parent in (folder.parent, folder.parent.parent):
        try:
            parent.rmdir()
        except OSError:
            return


def last_trainer_checkpoint(folder: Path) -> str | None:
    """The newest `checkpoint-<step>` that Trainer finished writing, or None.

    Trainer writes `trainer_state.json` last (after weights, optimizer, scheduler and RNG states),
    so a checkpoint whose state file is missing or does not parse was cut off by a kill mid-save:
    it is removed, and the previous one (kept until the new one is complete) is resumed instead.
    """
    if not folder.is_dir():
        return None
    complete = []
    for candidate in folder.glob("checkpoint-*"):
        if not candidate.name.removeprefix("checkpoint-").isdigit():
            continue
        try:
            json.loads((candidate / "trainer_state.json").read_text())
            complete.append(candidate)
        except (OSError, ValueError):
            shutil.rmtree(candidate, ignore_errors=True)
    if not complete:
        return None
    return str(max(complete, key=lambda path: int(path.name.removeprefix("checkpoint-"))))


STATE_FILE = "state.pt"


def save_state(folder: Path, state: dict[str, Any]) -> None:
    """Write a training loop's state as one file, atomically: a kill leaves the previous one."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{STATE_FILE}.partial"
    torch.save(state, partial)
    os.replace(partial, folder / STATE_FILE)


def load_state(folder: Path) -> dict[str, Any] | None:
    """The state `save_state` wrote to `folder`, or None when there is none."""
    path = folder / STATE_FILE
    # weights_only: the state holds tensors, numbers, strings, lists and dicts, nothing to unpickle
    return torch.load(path, weights_only=True) if path.is_file() else None
