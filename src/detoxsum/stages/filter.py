"""filter: drop empty, duplicate and out-of-length dialogues, and train/validation dialogues that
are also in test; count what was dropped and why.

Run: `python -m detoxsum.stages.filter`. Reads `filter` from params.yaml and `data/raw/`; writes
`data/filtered/*.jsonl` and `metrics/filter.json` (kept/dropped counts per split and reason).
"""


from detoxsum.config import load_stage_config
from detoxsum.data.filter import filter_split
from detoxsum.data.sources import read_jsonl_split
from detoxsum.data.splits import SPLITS, drop_test_dialogues
from detoxsum.errors import DataError
from detoxsum.models.loading import load_tokenizer
from detoxsum.outputs import atomic_dir, run_stage, write_json_atomic
from detoxsum.stages.paths import FILTERED_DIR, MODEL_DIR, RAW_DIR, metrics_file, timing_file


def main() -> None:
    cfg = load_stage_config("filter")
    count_tokens = None
    if cfg.min_tokens is not None or cfg.max_tokens is not None:
        tokenizer = load_tokenizer(MODEL_DIR)
        count_tokens = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    kept, counts = {}, {}
    for name in SPLITS:
        kept[name], counts[name] = filter_split(read_jsonl_split(RAW_DIR / f"{name}.jsonl"), cfg, count_tokens)
    for name, leaked in drop_test_dialogues(kept).items():
        counts[name].update(leaked, kept=len(kept[name]))
    for name in SPLITS:
        if len(kept[name]) == 0:
            raise DataError(
                f"{RAW_DIR / name}.jsonl: no rows left after filtering ({counts[name]}); "
                "widen filter.min_chars / filter.max_chars (or the token bounds)"
            )
    with atomic_dir(FILTERED_DIR) as tmp:
        for name in SPLITS:
            kept[name].to_json(tmp / f"{name}.jsonl", lines=True, force_ascii=False)
    write_json_atomic(metrics_file("filter"), counts)
    print("filter: " + ", ".join(f"{n} kept {counts[n]['kept']}/{counts[n]['rows_in']}" for n in SPLITS))


if __name__ == "__main__":
    run_stage(main, timing_file("filter"))
