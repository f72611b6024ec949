"""tokenize: render prompts and build training features for the model's family.

Run: `python -m detoxsum.stages.tokenize`. Reads `base` (prompt, truncation lengths), the filtered
train/validation splits and the fetched tokenizer; writes `data/tokenized/` (datasets format).
Encoder-decoder: prompt -> input_ids, summary -> labels. Decoder-only: chat-formatted prompt +
summary + end-of-turn, with the prompt masked out of the loss.
"""


from datasets import DatasetDict
from transformers import AutoConfig

from detoxsum.config import load_stage_config
from detoxsum.data.features import tokenize_split
from detoxsum.data.sources import read_jsonl_split
from detoxsum.models.family import family_of
from detoxsum.models.loading import load_tokenizer
from detoxsum.outputs import atomic_dir, run_stage
from detoxsum.stages.paths import FILTERED_DIR, MODEL_DIR, TOKENIZED_DIR, timing_file


def main() -> None:
    base = load_stage_config("base")
    tokenizer = load_tokenizer(MODEL_DIR)
    family = family_of(AutoConfig.from_pretrained(MODEL_DIR))
    features = DatasetDict({
        name: tokenize_split(read_jsonl_split(FILTERED_DIR / f"{name}.jsonl"), tokenizer, family, base.prompt,
                             base.max_source_tokens, base.max_target_tokens)
        for name in ("train", "validation")
    })
    with atomic_dir(TOKENIZED_DIR) as tmp:
        features.save_to_disk(str(tmp))
    print(f"tokenize: {family.name}; train={len(features['train'])}, validation={len(features['validation'])}")


if __name__ == "__main__":
    run_stage(main, timing_file("tokenize"))
