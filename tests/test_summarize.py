"""`python -m detoxsum summarize`: text, jsonl and csv in and out, errors as one line, and the
registered champion loaded through MLflow by the real command."""

import csv
import io
import json
import subprocess
import sys

import pytest
from pipeline import tool_env
from workspace import make_adapters, make_workspace, pipeline_run

from detoxsum.__main__ import main
from detoxsum.config import RegisterConfig
from detoxsum.data.dialogue_files import parse_text
from detoxsum.ship.registry import embedded_uri, register_pipeline_run

CFG = RegisterConfig(model_name="tiny-summarizer")
DIALOGUES = ["#Person1#: The train is late again.\n#Person2#: Then we take the bike.",
             "#Person1#: Lunch on Friday?\n#Person2#: Sure, at the garden cafe.",
             "#Person1#: Did you pay the rent?\n#Person2#: Yes, on Monday."]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_llama_dir):
    """A pipeline workspace after `dvc repro` (tiny model): `--model <folder>` needs no MLflow."""
    adapters = make_adapters(tiny_llama_dir, tmp_path_factory.mktemp("adapters"))
    return make_workspace(tmp_path_factory.mktemp("ws") / "repo", tiny_llama_dir, adapters)


def summarize(args, capsys):
    """Run the command in-process; returns (exit status, stdout, stderr)."""
    try:
        main(["summarize", *args])
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_error(status, err, *fragments):
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 1 and len(errors) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_text_blocks_are_split_on_blank_lines():
    text = "A: hi\nB: hello\n\n\n  \nA: bye\r\n\r\nB: ciao\n"
    assert [row["d"] for row in parse_text(text, "x.txt", "d")] == ["A: hi\nB: hello", "A: bye", "B: ciao"]


def test_text_file_prints_one_summary_per_dialogue(workspace, tmp_path, capsys):
    source = tmp_path / "chats.txt"
    source.write_text("\n\n".join(DIALOGUES) + "\n")
    status, out, err = summarize([str(source), "--model", str(workspace)], capsys)
    assert status == 0, err
    assert out.count("\n") == 3  # one line per dialogue


def test_jsonl_keeps_fields_and_adds_summary(workspace, tmp_path, capsys):
    source = tmp_path / "chats.jsonl"
    source.write_text("".join(json.dumps({"id": f"c{i}", "dialogue": d}) + "\n" for i, d in enumerate(DIALOGUES)))
    output = tmp_path / "out.jsonl"
    status, _, err = summarize([str(source), "--model", str(workspace), "--output", str(output)], capsys)
    assert status == 0, err
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["id"] for row in rows] == ["c0", "c1", "c2"] and all(isinstance(row["summary"], str) for row in rows)
    assert "3 summaries" in err


def test_csv_with_custom_column_keeps_reference_summaries(workspace, tmp_path, capsys):
    source = tmp_path / "chats.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["conversation", "summary"])
        writer.writerows([[d, f"reference {i}"] for i, d in enumerate(DIALOGUES)])
    status, out, err = summarize([str(source), "--model", str(workspace), "--column", "conversation"], capsys)
    assert status == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["summary"] for row in rows] == ["reference 0", "reference 1", "reference 2"]
    assert len(rows) == 3 and "model_summary" in rows[0]


@pytest.mark.parametrize("content, name, args, fragments", [
    (None, "missing.txt", [], ["missing.txt", "file not found"]),
    ("id,text\n1,hello\n", "chats.csv", [], ["chats.csv", "missing column 'dialogue'", "--column", "id, text"]),
    ('{"id": 1, "text": "x"}\n', "chats.jsonl", [], ["chats.jsonl line 1", "'dialogue'"]),
    ("{not json\n", "chats.jsonl", [], ["chats.jsonl line 1", "not valid JSON"]),
    ("\n \n\n", "empty.txt", [], ["empty.txt", "no dialogues found"]),
    ("A: hi", "chats.dat", [], ["chats.dat", "--format"]),
])
def test_bad_input_is_one_error_line(tmp_path, capsys, content, name, args, fragments):
    source = tmp_path / name
    if content is not None:
        source.write_text(content)
    status, _, err = summarize([str(source), *args, "--model", str(tmp_path)], capsys)
    assert_one_error(status, err, *fragments)


@pytest.mark.parametrize("data, name, fragments", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "chat.txt", ["chat.txt", "binary data"]),
    ("#Person1#: Caf\u00e9?".encode("latin-1"), "chat.txt", ["chat.txt", "not UTF-8"]),
])
def test_binary_or_undecodable_input_is_refused(tmp_path, capsys, data, name, fragments):
    (tmp_path / name).write_bytes(data)
    status, _, err = summarize([str(tmp_path / name), "--model", str(tmp_path)], capsys)
    assert_one_error(status, err, *fragments)


def test_a_missing_model_path_is_named_and_creates_no_registry(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "chats.txt").write_text(DIALOGUES[0])
    status, _, err = summarize(["chats.txt", "--model", str(tmp_path / "no-such-model")], capsys)
    assert_one_error(status, err, "no-such-model", "no such folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chats.txt"]


def test_csv_keeps_a_row_per_input_row_with_or_without_bom_and_long_cells(workspace, tmp_path, capsys):
    rows = [{"id": "a", "dialogue": DIALOGUES[0]}, {"id": "b", "dialogue": " "},
            {"id": "c", "dialogue": DIALOGUES[1] + " " + "la " * 50_000}]  # 150,000 characters
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["id", "dialogue"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    source = tmp_path / "chats.csv"
    source.write_bytes(b"\xef\xbb\xbf" + buffer.getvalue().encode())
    status, out, err = summarize([str(source), "--model", str(workspace)], capsys)
    assert status == 0, err
    written = list(csv.DictReader(io.StringIO(out)))
    assert [row["id"] for row in written] == ["a", "b", "c"]
    assert written[1]["summary"] == ""
    assert "warning: empty dialogue in row 2: its summary is empty" in err  # row 2 alone


def test_model_folder_that_is_no_model_names_the_folder(tmp_path, capsys):
    source = tmp_path / "chats.txt"
    source.write_text(DIALOGUES[0])
    status, _, err = summarize([str(source), "--model", str(tmp_path)], capsys)
    assert_one_error(status, err, str(tmp_path), "MLmodel", "artifacts/model")


def test_unknown_model_uri(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "chats.txt").write_text(DIALOGUES[0])
    status, _, err = summarize(["chats.txt", "--model", "models:/nobody@champion"], capsys)
    assert_one_error(status, err, "models:/nobody@champion", "mlflow.db")


def test_champion_from_the_registry_on_stdin(workspace, tmp_path):
    """The real command: stdin in, `models:/…@champion` (the default) out of the folder's mlflow.db."""
    adapters = {name: workspace / "artifacts" / name for name in ("lora", "ppo")}
    register_pipeline_run(pipeline_run("a" * 40, 20.0, 0.1, adapters, workspace / "artifacts" / "model"),
                          CFG, embedded_uri(tmp_path), tmp_path)
    env = {key: value for key, value in tool_env().items() if key != "MLFLOW_TRACKING_URI"}
    command = [sys.executable, "-m", "detoxsum", "summarize", "--model", f"models:/{CFG.model_name}@champion"]
    result = subprocess.run(command, cwd=tmp_path, env=env, input="\n\n".join(DIALOGUES[:2]),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("\n") == 2
    missing = subprocess.run([sys.executable, "-m", "detoxsum", "summarize", "--model", "models:/nobody@champion"],
                             cwd=tmp_path, env=env, input=DIALOGUES[0], capture_output=True, text=True)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        f"error: models:/nobody@champion: no registered model 'nobody' (registered: {CFG.model_name})"]
    unset = subprocess.run([sys.executable, "-m", "detoxsum", "summarize", "--model", f"models:/{CFG.model_name}@prod"],
                           cwd=tmp_path, env=env, input=DIALOGUES[0], capture_output=True, text=True)
    assert unset.returncode == 1 and unset.stderr.strip().splitlines() == [
        f"error: models:/{CFG.model_name}@prod: model '{CFG.model_name}' has no alias 'prod' "
        "(aliases: candidate -> v1, champion -> v1)"]


def test_binary_data_on_stdin_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(bytes(range(256)) * 16)))
    status, _, err = summarize(["-", "--model", str(tmp_path)], capsys)
    assert_one_error(status, err, "<stdin>", "binary data")
