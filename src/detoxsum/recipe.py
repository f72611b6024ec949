"""`python -m detoxsum.recipe`: merge a recipe into params.yaml, validated. The command keeps its name; the
code is `detoxsum.tools.recipe`."""

from detoxsum.outputs import run_stage
from detoxsum.tools.recipe import main

if __name__ == "__main__":
    run_stage(main)
