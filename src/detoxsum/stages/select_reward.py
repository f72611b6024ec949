"""select_reward: name the reward that train_ppo will use, so that train_ppo depends on the
trained reward model only when it uses it.

Run: `python -m detoxsum.stages.select_reward`. Reads `train_ppo.reward` from params.yaml and, with
`kind: trained`, `artifacts/reward/`; writes `artifacts/ppo_reward.json`: the reward's settings and,
for a trained reward, a digest of the model's files.

train_ppo depends on that file instead of on `artifacts/reward/`. DVC has no conditional
dependencies (nor nested interpolation such as `${deps.${train_ppo.reward.kind}}`), so the choice is
made here: retraining a reward model that PPO does not use leaves the file as it was, and with it
train_ppo and every stage after it; retraining the one it uses changes the digest.
"""

import dataclasses
from pathlib import Path

from detoxsum.checkpoints import folder_digest
from detoxsum.config import RewardSpec, load_stage_config
from detoxsum.errors import ModelLoadError
from detoxsum.outputs import run_stage, write_json_atomic
from detoxsum.stages.paths import PPO_REWARD_FILE, REWARD_DIR, timing_file


def main() -> None:
    spec = load_stage_config("train_ppo").reward
    selection = reward_selection(spec, REWARD_DIR)
    write_json_atomic(PPO_REWARD_FILE, selection)
    print(f"select_reward: {selection}")


def reward_selection(spec: RewardSpec, reward_dir: Path) -> dict:
    """What PPO's reward depends on: its settings, and the trained model's bytes where it is one."""
    selection = dataclasses.asdict(spec)
    if spec.kind == "trained":
        if not reward_dir.is_dir():
            raise ModelLoadError(f"{reward_dir}: no such folder; run the train_reward stage "
                                 "(train_ppo.reward.kind is trained)")
        selection["model_digest"] = folder_digest(reward_dir)
    return selection


if __name__ == "__main__":
    run_stage(main, timing_file("select_reward"))
