"""`python -m detoxsum.report`: write the pull-request comment of a pipeline run. The command keeps its name; the
code is `detoxsum.tools.report`."""

from detoxsum.tools.report import main

if __name__ == "__main__":
    main()
