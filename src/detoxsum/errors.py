"""The exceptions a user can fix: each message names the file, column or params key at fault."""


class PipelineError(Exception):
    """Bad input or configuration; stages print it as one line and exit non-zero."""


class ParamsError(PipelineError, ValueError):
    """An unknown, ill-typed or out-of-range key in params.yaml."""


class DataError(PipelineError, ValueError):
    """A data file that is missing, unreadable, or lacks a required column."""


class ModelLoadError(PipelineError, OSError):
    """A model or tokenizer that cannot be found or loaded."""
