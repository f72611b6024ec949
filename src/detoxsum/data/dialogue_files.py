"""Read dialogues to summarize and write the summaries: plain text, JSON lines or CSV.

- text: dialogues separated by one or more blank lines; summaries are written one per line;
- jsonl: one object per line with a `dialogue` field; each output row is the input row + `summary`;
- csv: a `dialogue` column; the output is the input table + a `summary` column.
(Input that already has a `summary` field gets `model_summary` instead, so references survive.)

The format comes from the file suffix (`.txt`, `.jsonl`, `.csv`) or is given explicitly; `-` is
standard input / output. Problems raise `DataError` naming the file, line or column to fix.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from detoxsum.errors import DataError

FORMATS = ("text", "jsonl", "csv")
SUFFIX_FORMATS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "jsonl", ".ndjson": "jsonl",
                  ".csv": "csv"}
STDIO = "-"


def format_of(path: str, explicit: str | None, fallback: str = "text") -> str:
    """The explicit format, else the one the suffix names, else `fallback` for standard input/output."""
    if explicit:
        return explicit
    if path == STDIO:
        return fallback
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIX_FORMATS:
        raise DataError(f"{path}: cannot tell the format from the suffix {suffix!r}; pass --format text, jsonl or csv")
    return SUFFIX_FORMATS[suffix]


def read_records(path: str, file_format: str, column: str = "dialogue") -> list[dict]:
    """Rows to summarize, each with the dialogue under `column` (other fields are kept). CSV and
    JSON lines keep every row, an empty dialogue too, so the output has one row per input row."""
    name = "<stdin>" if path == STDIO else path
    text = decode_text(sys.stdin.buffer.read() if path == STDIO else read_file(path), name)
    records = {"text": parse_text, "jsonl": parse_jsonl, "csv": parse_csv}[file_format](text, name, column)
    if not records:
        raise DataError(f"{name}: no dialogues found (empty input)")
    return records


def read_file(path: str) -> bytes:
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{path}: file not found")
    return file.read_bytes()


def decode_text(data: bytes, name: str) -> str:
    """UTF-8 text, with or without a byte-order mark; binary or other encodings are refused rather
    than summarized as garbage."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{name}: binary data, not text (a NUL byte at offset {nul})")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: not UTF-8 text (byte {exc.start}); convert it, e.g. iconv -t UTF-8") from None


def parse_text(text: str, name: str, column: str) -> list[dict]:
    blocks = (block.strip() for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")))
    return [{column: block} for block in blocks if block]


def decoded_json_lines(text: str) -> Iterator[tuple[int, Any, str | None]]:
    """(number from 1, decoded value, None) for each non-blank line of JSON-lines `text`, or
    (number, None, why) for a line that is not JSON."""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield number, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield number, None, exc.msg


def parse_jsonl(text: str, name: str, column: str) -> list[dict]:
    records = []
    for number, row, problem in decoded_json_lines(text):
        if problem is not None:
            raise DataError(f"{name} line {number}: not valid JSON ({problem})")
        if not isinstance(row, dict) or not isinstance(row.get(column), str):
            found = ", ".join(row) if isinstance(row, dict) else type(row).__name__
            raise DataError(f"{name} line {number}: missing text field '{column}' (set --column); found: {found}")
        records.append(row)
    return records


def parse_csv(text: str, name: str, column: str) -> list[dict]:
    csv.field_size_limit(2**31 - 1)  # the default (131,072 characters) rejects a long dialogue
    reader = csv.DictReader(io.StringIO(text))
    try:
        if reader.fieldnames is None:
            return []
        if column not in reader.fieldnames:
            raise DataError(f"{name}: missing column '{column}' (set --column); "
                            f"columns found: {', '.join(reader.fieldnames)}")
        return [{key: value or "" for key, value in row.items()} for row in reader]
    except csv.Error as exc:
        raise DataError(f"{name} line {reader.line_num}: not readable as CSV ({exc})") from None


def render(records: list[dict], summaries: list[str], file_format: str) -> str:
    """The output text: summaries alone, one per line (text), or the input rows with a `summary` added."""
    if file_format == "text":  # one line each, so line N is dialogue N's summary even when one is empty
        return "".join(" ".join(summary.split()) + "\n" for summary in summaries)
    key = "model_summary" if "summary" in records[0] else "summary"  # never overwrite a reference summary
    rows = [{**record, key: summary} for record, summary in zip(records, summaries)]
    if file_format == "jsonl":
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
