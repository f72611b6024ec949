"""`python -m detoxsum.plots`: render the DVC plots to PNG for the pull-request comment. The command keeps its name; the
code is `detoxsum.tools.plots`."""

from detoxsum.tools.plots import main

if __name__ == "__main__":
    main()
