"""Exceptions raised by flows and the command line."""


class FlowError(Exception):
    """Base class for errors raised by ``flows``."""


class ManifestError(FlowError, ValueError):
    """A manifest is unreadable or invalid; the message lists every problem found."""
