"""`python -m detoxsum.seeds`: the seed study's table and figure. The command keeps its name; the
code is `detoxsum.tools.seeds`."""

from detoxsum.outputs import run_stage
from detoxsum.tools.seeds import main

if __name__ == "__main__":
    run_stage(main)
