"""Exceptions raised by flows and the command line.

Errors of the libraries below keep their own bases (``PipelineError``, ``FeatureStoreError``,
``RegressorError``, ``vqa_core.errors.CoreError`` for manifests); the CLI reports all of them
and ``FlowError`` in one line with exit status 2.
"""


class FlowError(Exception):
    """Base class for errors raised by ``flows``."""


class PrefectServerError(FlowError, RuntimeError):
    """``prefect server start`` did not come up (the message holds the end of its log)."""


class PortableTaskError(RuntimeError):
    """A video task's exception that would not survive pickling (a Dask worker sends its
    failure back to the flow that way), carried as the original type's name and message
    (and, like every task failure, its traceback text in ``task_traceback``)."""

    def __init__(self, type_name: str, message: str):
        super().__init__(type_name, message)
        self.type_name, self.message = type_name, message

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"
