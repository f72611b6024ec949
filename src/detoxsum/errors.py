"""The exceptions a user can fix: each message names the file, column or params key at fault."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries' messages often run to several), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def yaml_kind(value: object) -> str:
    """What a parsed YAML value is, in YAML's words: a list, not ruamel's `CommentedSeq`."""
    for types, name in ((dict, "mapping"), (list, "list"), (str, "string"), (bool, "boolean"),
                        ((int, float), "number"), (type(None), "null")):
        if isinstance(value, types):
            return name
    return type(value).__name__


class PipelineError(Exception):
    """Bad input or configuration; stages print it as one line and exit non-zero."""


class ParamsError(PipelineError, ValueError):
    """An unknown, ill-typed or out-of-range key in params.yaml."""


class DataError(PipelineError, ValueError):
    """A data file that is missing, unreadable, or lacks a required column."""


class ModelLoadError(PipelineError, OSError):
    """A model or tokenizer that cannot be found or loaded."""


class TrainingDiverged(PipelineError, ArithmeticError):
    """A loss, reward or gradient norm that became NaN/inf or ran far above where it started: the
    message names the step and the params key most likely at fault (a learning rate)."""
