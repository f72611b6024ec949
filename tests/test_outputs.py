import pytest

from detoxsum.errors import DataError
from detoxsum.outputs import atomic_dir, run_stage, write_json_atomic


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folder left behind


def test_atomic_dir_creates_nothing_when_the_first_write_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "model"):
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_write_json_atomic(tmp_path):
    write_json_atomic(tmp_path / "m" / "x.json", {"b": 1, "a": 2})
    assert (tmp_path / "m" / "x.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'


def test_run_stage_turns_pipeline_errors_into_one_line(capsys):
    def failing():
        raise DataError("data/raw/train.jsonl: missing column 'summary'")

    with pytest.raises(SystemExit) as exit_info:
        run_stage(failing)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: data/raw/train.jsonl: missing column 'summary'\n"
