"""Command line of the trained summarizer: `python -m detoxsum summarize [INPUT] [options]`.

    python -m detoxsum summarize dialogues.txt                  # models:/detoxsum-summarizer@champion
    python -m detoxsum summarize chats.csv --output summaries.csv
    cat chat.txt | python -m detoxsum summarize --model models:/detoxsum-summarizer/3
    python -m detoxsum summarize chats.jsonl --model .          # this workspace's artifacts/ after dvc repro

INPUT is a file or `-` (standard input, the default): plain text with dialogues separated by blank
lines, JSON lines or CSV with a `dialogue` column (`--column`), told apart by the suffix or `--format`.
`--model` takes any MLflow model URI (`models:/name@alias`, `models:/name/3`, `runs:/<id>/summarizer`),
an MLflow model folder, or a pipeline workspace folder. The registry is `mlflow.db` in the current
folder unless `MLFLOW_TRACKING_URI` is set. Bad input prints one `error: …` line and exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from detoxsum.config import RegisterConfig, load_stage_config
from detoxsum.data.dialogue_files import FORMATS, STDIO, SUFFIX_FORMATS, format_of, read_records, render
from detoxsum.errors import ModelLoadError
from detoxsum.outputs import run_stage, write_text_atomic

LONG_INPUT = 16  # dialogues; longer inputs get a progress bar on stderr
Summarize = Callable[[list[str], bool], list[str]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m detoxsum", description="detoxsum command line")
    commands = parser.add_subparsers(dest="command", required=True)
    summarize = commands.add_parser("summarize", help="summarize dialogues with a registered or local model")
    summarize.add_argument("input", nargs="?", default=STDIO, help="dialogue file, or - for standard input (default)")
    summarize.add_argument("--model", help="MLflow model URI or folder (default: models:/<register.model_name>@champion)")
    summarize.add_argument("--format", choices=FORMATS, help="input format (default: from the suffix; text for stdin)")
    summarize.add_argument("--column", default="dialogue", help="jsonl field / csv column with the dialogue")
    summarize.add_argument("--output", "-o", help="write here instead of standard output (format from its suffix)")
    summarize.set_defaults(handler=summarize_command)
    return parser


def summarize_command(args: argparse.Namespace) -> None:
    input_format = format_of(args.input, args.format)
    records = read_records(args.input, input_format, args.column)  # before loading: bad input fails fast
    summarize = load_summarize(args.model or default_model_uri())
    summaries = summarize_nonempty(summarize, [record[args.column] for record in records])
    output_format = SUFFIX_FORMATS.get(Path(args.output).suffix.lower(), input_format) if args.output else input_format
    text = render(records, summaries, output_format)
    if args.output:
        write_text_atomic(args.output, text)
        print(f"summarize: {len(summaries)} summaries -> {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def summarize_nonempty(summarize: Summarize, dialogues: list[str]) -> list[str]:
    """One summary per dialogue; an empty dialogue gets an empty summary (and a warning), so every
    input row keeps its output row."""
    empty = {index for index, dialogue in enumerate(dialogues) if not dialogue.strip()}
    filled = [index for index in range(len(dialogues)) if index not in empty]
    if empty:
        rows = ", ".join(str(index + 1) for index in sorted(empty))
        print(f"warning: empty dialogue in row {rows}: its summary is empty", file=sys.stderr)
    summaries = [""] * len(dialogues)
    if filled:
        for index, summary in zip(filled, summarize([dialogues[i] for i in filled], len(filled) > LONG_INPUT)):
            summaries[index] = summary
    return summaries


def default_model_uri() -> str:
    """The champion of the registered model named in ./params.yaml (or the default name)."""
    name = load_stage_config("register").model_name if Path("params.yaml").is_file() else RegisterConfig().model_name
    return f"models:/{name}@champion"


def load_summarize(model: str) -> Summarize:
    folder = Path(model)
    if folder.is_dir() and not (folder / "MLmodel").is_file():
        return workspace_summarizer(folder).summarize
    if ":/" not in model and not folder.exists():  # neither a URI (models:/, runs:/, s3://) nor a folder
        raise ModelLoadError(f"--model {model}: no such folder, and not an MLflow model URI such as "
                             "models:/detoxsum-summarizer@champion")
    from detoxsum.ship.registry import load_model

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr keeps one bar: ours
    import pandas as pd

    pyfunc = load_model(model, Path("."))
    return lambda dialogues, show_progress: list(pyfunc.predict(pd.DataFrame({"dialogue": dialogues}),
                                                                params={"show_progress": show_progress}))


def workspace_summarizer(folder: Path):
    """The model `register.model` of a pipeline workspace (after `dvc repro`), without MLflow."""
    from detoxsum.models.summarizer import GenerationSettings, adapter_chain, load_summarizer

    model_dir = folder / "artifacts" / "model"
    if not (folder / "params.yaml").is_file() or not model_dir.is_dir():
        raise ModelLoadError(f"--model {folder}: neither an MLflow model folder (no MLmodel file) nor a pipeline "
                             "workspace with params.yaml and artifacts/model (run dvc repro there)")
    params = folder / "params.yaml"
    base, evaluate, register = (load_stage_config(name, params) for name in ("base", "evaluate", "register"))
    adapters = adapter_chain(register.model, folder / "artifacts" / "lora", folder / "artifacts" / "ppo")
    return load_summarizer(model_dir, adapters, GenerationSettings.from_configs(base, evaluate))


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_stage(lambda: args.handler(args))


if __name__ == "__main__":
    main()
