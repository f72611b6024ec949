"""train_ppo: make the LoRA-tuned summarizer less toxic with PPO against a toxicity reward model.

Run: `python -m detoxsum.stages.train_ppo`. Reads `base` and `train_ppo` from params.yaml, the fetched
model, the SFT adapter and the training dialogues of `data/filtered/train.jsonl`; writes the PPO
adapter and value head to `artifacts/ppo/`, a summary to `metrics/train_ppo.json` and per-step
curves (reward, KL, entropy, clip fraction, ...) to `dvclive/train_ppo/` (DVC plots). Every
`train_ppo.checkpoint_steps` steps the run's state goes to `checkpoints/train_ppo/`; after a kill,
`dvc repro` continues from it (see checkpoints.py), and it is removed once the adapter is written.

With `train_ppo.reward.kind: trained` the reward is train_reward stage's preference model
(`artifacts/reward/`), which reads each summary together with its dialogue.

The adapter loads back as `load_with_adapters("artifacts/model", ["artifacts/lora", "artifacts/ppo"])`.
With `train_lora.method: full`, artifacts/lora is the whole SFT model: it is the frozen reference and
the adapter goes on it. A soft prompt (`prompt_tuning`) is refused before anything loads.
"""

import time

from accelerate.utils import set_seed
from transformers import AutoConfig

from detoxsum.checkpoints import checkpoint_dir, discard, fingerprint, folder_digest
from detoxsum.config import RewardSpec, load_stage_config
from detoxsum.data.sources import read_jsonl_split
from detoxsum.models.loading import device
from detoxsum.outputs import atomic_dir, open_live, run_stage, write_json_atomic
from detoxsum.ppo import (
    DialogueReward,
    RewardFn,
    build_ppo_model,
    hardest_dialogues,
    render_prompts,
    save_ppo_model,
    summarize_history,
    train_ppo,
)
from detoxsum.ppo.model import refuse_soft_prompt
from detoxsum.precision import resolve_for_model
from detoxsum.scoring.reward import build_reward_model
from detoxsum.scoring.reward_model import TrainedReward
from detoxsum.stages.paths import (
    CHECKPOINTS_DIR,
    LORA_DIR,
    MODEL_DIR,
    PPO_DIR,
    REWARD_DIR,
    TRAIN_FILE,
    live_dir,
    metrics_file,
    timing_file,
)


def main() -> None:
    base = load_stage_config("base")
    cfg = load_stage_config("train_ppo")
    refuse_soft_prompt([LORA_DIR])  # before the reward model loads: no work for a run that cannot go on
    seed = base.seed if cfg.seed is None else cfg.seed
    set_seed(seed)
    reward_fn = ppo_reward(cfg.reward)
    dialogues = hardest_dialogues(list(read_jsonl_split(TRAIN_FILE)["dialogue"]), reward_fn, cfg.hardest_prompts)
    model_config = AutoConfig.from_pretrained(MODEL_DIR)
    precision = resolve_for_model(base.precision, model_config, device())
    ppo = build_ppo_model(MODEL_DIR, [LORA_DIR], cfg, precision).to(device())
    prompts = render_prompts(dialogues, ppo, base)
    if isinstance(reward_fn, DialogueReward):
        reward_fn.dialogue_of.update(zip(prompts, dialogues))
    # Everything the trained adapter depends on: a checkpoint of another run is never resumed. Other
    # base weights of the same architecture come with another SFT adapter, so its bytes cover them.
    run = fingerprint(cfg, seed, precision, prompts, model_config.to_dict(), folder_digest(LORA_DIR),
                      *([folder_digest(REWARD_DIR)] if cfg.reward.kind == "trained" else []))
    work_dir = checkpoint_dir("train_ppo", run, CHECKPOINTS_DIR)
    with atomic_dir(live_dir("train_ppo")) as curves_dir:  # the tracked curves change only once the adapter is written
        live = open_live(curves_dir)

        def log_step(stats: dict[str, float]) -> None:
            for name, value in stats.items():
                live.log_metric(name, value)
            live.next_step()

        started = time.perf_counter()
        history = train_ppo(ppo, prompts, reward_fn, cfg, seed, on_step=log_step, checkpoints=work_dir)
        summary = {**summarize_history(history, time.perf_counter() - started), "precision": precision}
        live.end()
        with atomic_dir(PPO_DIR) as tmp:
            save_ppo_model(ppo, tmp)
        write_json_atomic(metrics_file("train_ppo"), summary)
    discard(work_dir)
    print(f"train_ppo: {summary}")


def ppo_reward(spec: RewardSpec) -> RewardFn:
    """What PPO scores summaries with: a classifier's reward of the summary alone, or (kind
    `trained`) the preference model's reward of the summary given its dialogue."""
    if spec.kind == "trained":
        return DialogueReward(TrainedReward.load(REWARD_DIR).rewards)
    return build_reward_model(spec).rewards


if __name__ == "__main__":
    run_stage(main, timing_file("train_ppo"))
