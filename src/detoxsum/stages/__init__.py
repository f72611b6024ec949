"""One thin entry point per DVC stage: `python -m detoxsum.stages.<stage>`.

Each parses its params section, calls the library, and writes its outputs atomically. Output
paths live in `stages/paths.py` (and in dvc.yaml), never in the library.
"""
