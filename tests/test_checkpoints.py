import json

import torch

from detoxsum.checkpoints import (
    checkpoint_dir, discard, fingerprint, folder_digest, last_trainer_checkpoint, load_state, save_state,
)
from detoxsum.config import TrainLoraConfig


def test_fingerprint_is_stable_and_changes_with_any_part():
    cfg = TrainLoraConfig()
    assert fingerprint(cfg, 42) == fingerprint(TrainLoraConfig(), 42)
    assert fingerprint(cfg, 42) != fingerprint(cfg, 43)
    assert fingerprint(cfg, 42) != fingerprint(TrainLoraConfig(lr=cfg.learning_rate * 2), 42)


def test_checkpoint_dir_removes_the_stages_other_runs_only(tmp_path):
    old = checkpoint_dir("train_lora", "aaa", root=tmp_path)
    (old / "checkpoint-4").mkdir()
    other_stage = checkpoint_dir("train_ppo", "aaa", root=tmp_path)
    new = checkpoint_dir("train_lora", "bbb", root=tmp_path)
    assert new.is_dir() and not old.exists() and other_stage.is_dir()
    assert checkpoint_dir("train_lora", "bbb", root=tmp_path) == new


def write_checkpoint(folder, step, complete=True):
    path = folder / f"checkpoint-{step}"
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"weights")
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_last_trainer_checkpoint_skips_and_removes_one_cut_off_mid_save(tmp_path):
    assert last_trainer_checkpoint(tmp_path / "missing") is None
    assert last_trainer_checkpoint(tmp_path) is None
    write_checkpoint(tmp_path, 4)
    write_checkpoint(tmp_path, 12)
    half = write_checkpoint(tmp_path, 16, complete=False)
    truncated = write_checkpoint(tmp_path, 20)
    (truncated / "trainer_state.json").write_text('{"global_st')
    assert last_trainer_checkpoint(tmp_path) == str(tmp_path / "checkpoint-12")  # 12 > 4 numerically
    assert not half.exists() and not truncated.exists()


def test_state_round_trips_and_a_partial_write_leaves_the_previous_one(tmp_path):
    assert load_state(tmp_path) is None
    state = {"weights": [torch.arange(3.0)], "history": [{"kl": 0.5}], "beta": 0.05,
             "generator": torch.Generator().manual_seed(1).get_state(), "baselines": {"a prompt": -0.2}}
    save_state(tmp_path / "run", state)
    (tmp_path / "run" / ".state.pt.partial").write_bytes(b"cut off")  # a later save killed mid-write
    loaded = load_state(tmp_path / "run")
    assert torch.equal(loaded["weights"][0], state["weights"][0]) and torch.equal(loaded["generator"], state["generator"])
    assert loaded["history"] == state["history"] and loaded["baselines"] == state["baselines"]


def test_discard_removes_the_run_and_folders_left_empty(tmp_path):
    first = checkpoint_dir("train_lora", "aaa", root=tmp_path / "checkpoints")
    discard(first)
    assert not (tmp_path / "checkpoints").exists()
    kept = checkpoint_dir("train_ppo", "bbb", root=tmp_path / "checkpoints")
    discard(checkpoint_dir("train_lora", "ccc", root=tmp_path / "checkpoints"))
    assert kept.is_dir()


def test_folder_digest_follows_names_and_bytes(tmp_path):
    (tmp_path / "adapter.safetensors").write_bytes(b"one")
    before = folder_digest(tmp_path)
    assert folder_digest(tmp_path) == before
    (tmp_path / "adapter.safetensors").write_bytes(b"two")
    assert folder_digest(tmp_path) != before
