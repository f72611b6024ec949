"""Versions registered before models-from-code pickled `detoxsum.registry.DialogueSummarizer`: the name
stays importable for them. The registry is `detoxsum.ship.registry`."""

from detoxsum.ship.serving import DialogueSummarizer  # noqa: F401
