"""detoxsum: LoRA dialogue summarization plus PPO detoxification, as a DVC pipeline."""

__version__ = "0.1.0"
