"""Every path the stages read and write, in one place (dvc.yaml names the same ones). The library
takes paths as arguments and never knows these."""

from pathlib import Path

# fetch
MODEL_DIR = Path("artifacts/model")
RAW_DIR = Path("data/raw")
# filter, tokenize
FILTERED_DIR = Path("data/filtered")
TRAIN_FILE = FILTERED_DIR / "train.jsonl"
TEST_FILE = FILTERED_DIR / "test.jsonl"
TOKENIZED_DIR = Path("data/tokenized")
# training
LORA_DIR = Path("artifacts/lora")
REWARD_DIR = Path("artifacts/reward")
PPO_REWARD_FILE = Path("artifacts/ppo_reward.json")  # select_reward: what PPO's reward depends on
PPO_DIR = Path("artifacts/ppo")
CHECKPOINTS_DIR = Path("checkpoints")  # resumable training state, outside DVC's outputs
# calibrate
CALIBRATION_FILE = Path("data/calibration/insults.jsonl")
# generate, evaluate
SUMMARIES_DIR = Path("results/summaries")
PREDICTIONS_FILE = Path("results/predictions.jsonl")
PLOTS_DIR = Path("plots")
HISTOGRAM_DIR = PLOTS_DIR / "toxicity"
# metrics, curves, timings
METRICS_DIR = Path("metrics")
TIMING_DIR = METRICS_DIR / "timing"
LIVE_DIR = Path("dvclive")
LOCK_FILE = Path("dvc.lock")


def metrics_file(stage: str) -> Path:
    """A stage's own metrics (`metrics/<stage>.json`)."""
    return METRICS_DIR / f"{stage}.json"


def live_dir(stage: str) -> Path:
    """A training stage's DVCLive curves (`dvclive/<stage>`)."""
    return LIVE_DIR / stage


def timing_file(stage: str) -> Path:
    """A stage's wall time and FLOPs (`python -m detoxsum.timing` reads them all)."""
    return TIMING_DIR / f"{stage}.json"
