"""Exceptions raised by flows and the command line."""


class FlowError(Exception):
    """Base class for errors raised by ``flows``."""


class ManifestError(FlowError, ValueError):
    """A manifest is unreadable or invalid; the message lists every problem found."""


class DatasetError(FlowError, ValueError):
    """A dataset folder or its label files cannot be turned into a manifest.

    ``problems`` lists every problem found (the message summarises them by kind); nothing was
    written.
    """

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems is not None else [message]


class UnknownDatasetError(FlowError, KeyError):
    """No dataset adapter is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class ManifestExistsError(FlowError, FileExistsError):
    """The output manifest (or its splits file) exists and overwriting was not asked for."""
