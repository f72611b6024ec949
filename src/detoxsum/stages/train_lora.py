"""train_lora: fine-tune the summarizer on the tokenized dialogue/summary pairs (`train_lora.method`).

Run: `python -m detoxsum.stages.train_lora`. Reads `base` and `train_lora` from params.yaml,
`artifacts/model/` and `data/tokenized/`; writes to `artifacts/lora/` what the method trained (a
LoRA adapter for lora and qlora, a soft prompt for prompt_tuning, the whole model and its tokenizer
for full; see training/lora.py), final losses, the method, learning rate and trainable parameters to
`metrics/train_lora.json`, and loss curves to `dvclive/train_lora/` (DVC plots). Checkpoints go to
`checkpoints/train_lora/` every `train_lora.checkpoint_steps`; after a kill, `dvc repro` continues
from the last one (see checkpoints.py), and they are removed once the adapter is written.
"""

import contextlib

from accelerate.utils import set_seed
from datasets import load_from_disk

from detoxsum.checkpoints import checkpoint_dir, discard, fingerprint
from detoxsum.config import load_stage_config
from detoxsum.distributed import is_main_process, rank_and_world, relaunch_if_parallel
from detoxsum.errors import DataError
from detoxsum.outputs import atomic_dir, open_live, run_stage, write_json_atomic
from detoxsum.stages.paths import (
    CHECKPOINTS_DIR,
    LORA_DIR,
    MODEL_DIR,
    TOKENIZED_DIR,
    live_dir,
    metrics_file,
    timing_file,
)
from detoxsum.training.callbacks import StepAlignedDVCLiveCallback
from detoxsum.training.lora import load_for_training, save_trained, train_lora


def main() -> None:
    base = load_stage_config("base")
    cfg = load_stage_config("train_lora")
    relaunch_if_parallel(base.num_processes, "detoxsum.stages.train_lora")
    set_seed(base.seed)
    if not TOKENIZED_DIR.is_dir():
        raise DataError(f"{TOKENIZED_DIR}: not found; run the tokenize stage")
    features = load_from_disk(str(TOKENIZED_DIR))
    model, tokenizer, family, precision = load_for_training(MODEL_DIR, cfg.method, base.precision)
    main_process = is_main_process()  # one of several launched processes: only rank 0 writes
    processes = rank_and_world()[1]  # as launched, not as asked: the batch is split among these
    # Everything the trained adapter depends on: a checkpoint of another run is never resumed.
    run = fingerprint(cfg, base.seed, precision, processes, features["train"]._fingerprint,
                      features["validation"]._fingerprint, model.config.to_dict())
    work_dir = checkpoint_dir("train_lora", run, CHECKPOINTS_DIR)
    # The tracked curves change only once the adapter is written (only process 0 writes any).
    with atomic_dir(live_dir("train_lora")) if main_process else contextlib.nullcontext() as curves_dir:
        callbacks = [StepAlignedDVCLiveCallback(lambda: open_live(curves_dir))] if main_process else []
        trained, metrics = train_lora(
            model, tokenizer, family, features["train"], features["validation"], cfg, base.seed, precision,
            work_dir, callbacks=callbacks, processes=processes,
        )
        if not main_process:
            return
        metrics.update(precision=precision, num_processes=processes)
        with atomic_dir(LORA_DIR) as tmp:
            save_trained(trained, tokenizer, tmp)
        write_json_atomic(metrics_file("train_lora"), metrics)
    discard(work_dir)
    print(f"train_lora: {metrics}")


if __name__ == "__main__":
    run_stage(main, timing_file("train_lora"))
