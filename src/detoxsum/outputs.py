"""Write stage outputs atomically so DVC never sees a half-written file or folder, and a kill at
any moment never loses the last complete output.

Everything is written under a temporary sibling (`.<name>.tmp-XXXX`) and moved into place only once
complete. A folder that already exists is swapped with the new one in a single `renameat2(...,
RENAME_EXCHANGE)` call (Linux): there is no instant at which `path` holds neither. Where the kernel or
file system has no exchange, the old folder is first renamed aside (`.<name>.old-XXXX`) and the
next write of the same path puts it back if the process died between the two renames. Leftovers of
an interrupted write are removed by the next write of the same path; `.gitignore` ignores them.
Files and folders get the modes the umask gives (tempfile's owner-only modes are widened).

Hand-written because neither the standard library nor a maintained package exchanges two folders
atomically; `os.replace` cannot replace a non-empty folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from detoxsum.errors import PipelineError

TMP_INFIX, OLD_INFIX = ".tmp-", ".old-"
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@functools.cache
def _renameat2():
    """libc's renameat2, or None where the C library has none (not Linux, old glibc)."""
    return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two existing paths; False where this system cannot (then nothing moved)."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(first))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _writer_alive(leftover: Path, infix: str) -> bool:
    """Whether the process that made `.<name><infix><pid>-...` still runs: two processes may write
    the same path at once (queued experiments converting into one shared cache), and one must not
    clean up the other's write in progress."""
    try:
        pid = int(leftover.name.rsplit(infix, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # PermissionError: alive, owned by another user
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def recover_interrupted(path: Path) -> None:
    """Undo what a killed write of `path` left: put a set-aside old output back where `path` is
    missing, then remove the temporary and set-aside siblings whose writer is gone."""
    aside = [p for p in sorted(path.parent.glob(f".{path.name}{OLD_INFIX}*")) if not _writer_alive(p, OLD_INFIX)]
    if aside and not path.exists():
        os.replace(aside.pop(), path)
    temporary = [p for p in sorted(path.parent.glob(f".{path.name}{TMP_INFIX}*")) if not _writer_alive(p, TMP_INFIX)]
    for leftover in aside + temporary:
        _remove(leftover)


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}{TMP_INFIX}{os.getpid()}-"


def swap_into_place(new: Path, path: Path) -> None:
    """Move the complete `new` to `path`, replacing whatever is there."""
    if not path.exists() or (path.is_file() and new.is_file()):
        os.replace(new, path)
        return
    if _exchange(new, path):  # `path` now holds the new output, `new` the old one
        _remove(new)
        return
    aside = path.parent / new.name.replace(TMP_INFIX, OLD_INFIX, 1)
    os.replace(path, aside)
    os.replace(new, path)
    _remove(aside)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder that replaces `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it owner-only
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    swap_into_place(tmp, path)


def open_live(folder: Path):
    """DVCLive logging into `folder`, touching neither dvc.yaml nor DVC experiments.

    A stage gives it an `atomic_dir` of its git-tracked curves: `Live()` empties the folder it opens,
    so opening the tracked one would lose the last run's curves to a run that fails or is killed."""
    from dvclive import Live

    return Live(dir=str(folder), dvcyaml=False, save_dvc_exp=False, report=None)


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted(path)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it owner-only
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def jsonl_text(rows: list[dict[str, Any]]) -> str:
    """JSON lines: one object per line, non-ASCII kept as is."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file (blank lines skipped): what `write_jsonl_atomic` wrote."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_jsonl_atomic(path: str | Path, rows: list[dict[str, Any]]) -> None:
    write_text_atomic(path, jsonl_text(rows))


def run_stage(main: Callable[[], None], timing_file: Path | None = None) -> None:
    """Run a stage's main; turn a PipelineError into one `error:` line and exit status 1. With
    `timing_file`, its wall time and FLOPs go there (`timing.StageTimer`) when it succeeds, from the
    process that did the work: process 0 of a parallel run (the launching process leaves by
    SystemExit, which writes nothing)."""
    from detoxsum.distributed import rank_and_world
    from detoxsum.stage_cost import StageTimer, keep_freed_memory

    keep_freed_memory()
    rank, world = rank_and_world()
    timer = StageTimer(timing_file, world) if timing_file is not None and rank == 0 else contextlib.nullcontext()
    try:
        with timer:
            main()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
