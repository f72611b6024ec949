"""detoxsum: LoRA dialogue summarization plus PPO detoxification, as a DVC pipeline."""

import logging

__version__ = "0.1.0"

# peft imports bitsandbytes (train_lora.method qlora) wherever it is installed, and on an AVX512-BF16
# CPU bitsandbytes 0.50 then warns on every start that it could not fetch an optional kernel from
# the Hub (`pip install kernels`); its own CPU kernels are used instead, so the line is only noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
