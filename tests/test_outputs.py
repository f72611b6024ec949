import os
import signal
import subprocess
import sys
import textwrap

import pytest

import detoxsum.outputs as outputs
from detoxsum.errors import DataError
from detoxsum.outputs import atomic_dir, recover_interrupted, run_stage, write_json_atomic, write_text_atomic


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


def write_output(target, text):
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text(text)
        (tmp / "b.txt").write_text(text)


def content(target):
    return {p.name: p.read_text() for p in target.iterdir()} if target.exists() else None


class Interrupted(BaseException):
    """Stands for Ctrl-C or a kill between two steps of the swap."""


def interrupt_on_call(monkeypatch, name, call_number):
    """Make the `call_number`-th call of outputs.<name> raise before it does anything."""
    real, calls = getattr(outputs, name), []

    def wrapped(*args, **kwargs):
        calls.append(args)
        if len(calls) == call_number:
            raise Interrupted
        return real(*args, **kwargs)

    monkeypatch.setattr(outputs, name, wrapped)


OLD, NEW = {"a.txt": "old", "b.txt": "old"}, {"a.txt": "new", "b.txt": "new"}


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "rename-aside"])
@pytest.mark.parametrize("step", ["_exchange", "os.replace#1", "os.replace#2", "_remove#1"])
def test_an_interrupted_swap_never_loses_the_last_complete_output(tmp_path, monkeypatch, exchange, step):
    """Interrupt each step of replacing an existing folder: `path` always holds one complete output
    (old or new) once the next write of it has recovered, and no leftover survives that write."""
    target = tmp_path / "out"
    write_output(target, "old")
    if not exchange:
        monkeypatch.setattr(outputs, "_exchange", lambda first, second: False)
    name, _, number = step.partition("#")
    if name == "os.replace":
        real_replace, calls = os.replace, []

        def replace(*args):
            calls.append(args)
            if len(calls) == int(number):
                raise Interrupted
            return real_replace(*args)

        monkeypatch.setattr(outputs.os, "replace", replace)
    else:
        interrupt_on_call(monkeypatch, name, int(number or 1))
    try:
        write_output(target, "new")
    except Interrupted:
        pass
    monkeypatch.undo()
    assert content(target) in (OLD, NEW, None)
    if content(target) is None:  # only between the two renames of the fallback
        assert not exchange and step == "os.replace#2"
    recover_interrupted(target)
    assert content(target) in (OLD, NEW)
    write_output(target, "next")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert content(target) == {"a.txt": "next", "b.txt": "next"}


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import detoxsum.outputs as outputs
    target, when = Path(sys.argv[1]), sys.argv[2]
    if when == "between-renames":
        outputs._exchange = lambda first, second: False
        real_replace = os.replace
        def replace(source, destination):
            real_replace(source, destination)
            os.kill(os.getpid(), signal.SIGKILL)  # right after the old output moved aside
        outputs.os.replace = replace
    with outputs.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("new")
        if when == "mid-write":
            os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("when", ["mid-write", "between-renames"])
def test_a_killed_writer_leaves_the_old_output_or_a_way_back_to_it(tmp_path, when):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("old")
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target), when])
    assert killed.returncode == -signal.SIGKILL
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "out"]
    assert leftovers and all(name.startswith(".out.") for name in leftovers)
    with atomic_dir(target) as tmp:  # the next run: cleans up, and the old output was there
        assert (target / "a.txt").read_text() == "old"
        (tmp / "a.txt").write_text("next")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_live_writers_temporary_folder_is_left_alone(tmp_path):
    target = tmp_path / "out"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        in_progress = tmp_path / f".out.tmp-{other.pid}-abc"
        in_progress.mkdir()
        write_output(target, "mine")
        assert in_progress.exists()
    finally:
        other.kill()
        other.wait()
    write_output(target, "again")
    assert not in_progress.exists()


def test_outputs_get_the_modes_the_umask_gives(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "x").write_text("x")
        write_text_atomic(tmp_path / "file.json", "{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "file.json").stat().st_mode & 0o777 == 0o644


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
