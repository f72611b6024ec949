"""Data-parallel runs on several processes, for train_lora and generation.

A stage calls `relaunch_if_parallel(base.num_processes, module)` first. With one process it returns
and the stage runs as usual. With N > 1 it checks that N devices exist (GPUs, or CPU cores on a
machine without one), runs the same stage on N processes through torch's launcher (torchrun,
`torch.distributed.run --standalone`) and exits with their status. Each process finds its rank and
the world size in its environment (gloo on CPUs, NCCL on GPUs; one GPU per process by LOCAL_RANK).
`accelerate launch` is not used: with `--cpu` it starts a single process unless MPI is set up.
transformers' Trainer shards the batches and all-reduces the gradients by itself; generation shards
the dialogues (`shard`, `gather`). Files and DVCLive curves are written by rank 0 only
(`is_main_process`), so the results look the same whatever N was.

PPO is not among them: each step alternates sampling, scoring and updating on one small batch, which
data parallelism would split into slivers too small to pay for their synchronisation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch

from detoxsum.errors import ParamsError

LAUNCHED = "DETOXSUM_LAUNCHED"  # set in the launched processes, so they do not launch again


def launched() -> bool:
    return os.environ.get(LAUNCHED) == "1"


def available_devices() -> tuple[int, str]:
    """How many processes the machine can hold, and of what: GPUs, else CPU cores."""
    if torch.cuda.is_available():
        return torch.cuda.device_count(), "GPUs"
    return os.cpu_count() or 1, "CPU cores"


def check_num_processes(num_processes: int) -> None:
    count, kind = available_devices()
    if num_processes > count:
        raise ParamsError(f"params key 'base.num_processes' is {num_processes}, but this machine has {count} {kind}")


def relaunch_if_parallel(num_processes: int, module: str, args: list[str] | None = None) -> None:
    """Run `module` on `num_processes` processes and exit with their status, unless it is 1 or this
    process is already one of them; before any work, fail on more processes than devices."""
    if num_processes == 1 or launched():
        return
    check_num_processes(num_processes)
    os.environ[LAUNCHED] = "1"
    os.environ["OMP_NUM_THREADS"] = threads_per_process(num_processes, os.environ)
    raise SystemExit(launch(launcher_args(num_processes, module, args or [])))


def launcher_args(num_processes: int, module: str, args: list[str]) -> list[str]:
    """torchrun's arguments for `num_processes` copies of `python -m module args` on this machine."""
    return ["--standalone", "--nproc_per_node", str(num_processes), "-m", module, *args]


def threads_per_process(num_processes: int, env: Mapping[str, str]) -> str:
    """OMP_NUM_THREADS for each process: the user's, else an equal share of the cores (torchrun
    would give each process one thread)."""
    return env.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // num_processes))


def launch(arguments: list[str]) -> int:
    """Run torch's launcher (torchrun) with `arguments` in this process; return 0, or the exit
    status of the first process that failed. Its own report of a failure (a traceback and a table)
    is left out: each process has already printed its `error:` line."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(parse_args(arguments))
    except ChildFailedError as exc:
        return exc.get_first_failure()[1].exitcode or 1
    return 0


def rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def shard(items: list, rank: int, world: int) -> list:
    """This rank's contiguous share of `items` (the first ranks take one more when it does not divide)."""
    size, extra = divmod(len(items), world)
    start = rank * size + min(rank, extra)
    return items[start : start + size + (rank < extra)]


def gather(items: list) -> list:
    """Every rank's list, concatenated in rank order (the inverse of `shard`); as is with one process."""
    if rank_and_world()[1] == 1:
        return items
    from accelerate.utils import gather_object

    per_rank = gather_object([items])  # one list per rank, so an empty shard keeps its place
    return [item for part in per_rank for item in part]


def init_process_group() -> None:
    """Join the launched processes' group (generation does not go through Trainer, which would)."""
    if rank_and_world()[1] > 1:
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())
