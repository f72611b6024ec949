"""Training: train_lora's methods and callbacks, QLoRA's 4-bit base, the reward model's training."""
