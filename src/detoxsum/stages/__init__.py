"""One thin entry point per DVC stage: `python -m detoxsum.stages.<stage>`.

Each parses its params section, calls the library, and writes its outputs atomically. Output
paths live here (and in dvc.yaml), never in the library.
"""

from pathlib import Path

# Each stage's wall time and FLOPs (`python -m detoxsum.timing` reads them all).
TIMING_DIR = Path("metrics/timing")


def timing_file(stage: str) -> Path:
    return TIMING_DIR / f"{stage}.json"
