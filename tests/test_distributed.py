"""The launcher behind `base.num_processes`: N real processes through torchrun (checked here on a CPU)."""

import subprocess
import sys

from detoxsum.distributed import gather, launcher_args, shard, threads_per_process

# A module that reports its rank in a file of its own (the processes share stdout, where their lines
# can interleave), or fails in rank 1 the way a stage does (an error line, status 3).
RANK_REPORTER = """import os, sys
rank, world = os.environ["RANK"], os.environ["WORLD_SIZE"]
with open(f"rank_{rank}.txt", "w") as report:
    report.write(f"rank {rank} of {world} threads {os.environ['OMP_NUM_THREADS']}")
if len(sys.argv) > 1 and rank == "1":
    print("error: params key 'x' is wrong", file=sys.stderr)
    raise SystemExit(3)
"""


def launch_in_a_process(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """`relaunch_if_parallel(2, "report_rank", args)` in a fresh interpreter, as a stage calls it."""
    (tmp_path / "report_rank.py").write_text(RANK_REPORTER)
    code = f"from detoxsum.distributed import relaunch_if_parallel; relaunch_if_parallel(2, 'report_rank', {list(args)})"
    return subprocess.run([sys.executable, "-c", code], check=False, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(tmp_path), "PATH": "", "OMP_NUM_THREADS": "1"})


def test_two_processes_start_with_ranks_0_and_1_of_2(tmp_path):
    """What `accelerate launch --cpu --num_processes 2` did not do: it started one process, which
    then did all the work alone on one thread."""
    result = launch_in_a_process(tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    reports = sorted(path.read_text() for path in tmp_path.glob("rank_*.txt"))
    assert reports == ["rank 0 of 2 threads 1", "rank 1 of 2 threads 1"]


def test_a_failing_process_leaves_its_error_line_and_status_without_the_launchers_traceback(tmp_path):
    result = launch_in_a_process(tmp_path, "fail")
    assert result.returncode == 3
    assert "error: params key 'x' is wrong" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_processes_run_the_stage_module_under_torchrun():
    assert launcher_args(2, "detoxsum.stages.generate", ["lora"]) == \
        ["--standalone", "--nproc_per_node", "2", "-m", "detoxsum.stages.generate", "lora"]


def test_each_process_gets_its_share_of_the_cores_unless_the_user_set_threads(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert threads_per_process(2, {}) == "4" and threads_per_process(16, {}) == "1"
    assert threads_per_process(2, {"OMP_NUM_THREADS": "3"}) == "3"


def test_shards_cover_every_item_once_in_order():
    items = list(range(7))
    assert [shard(items, rank, 3) for rank in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert gather(items) == items  # one process: as is
