"""Exceptions raised by flows and the command line.

Errors of the libraries below keep their own bases (``PipelineError``, ``FeatureStoreError``,
``RegressorError``, ``vqa_core.errors.CoreError`` for manifests); the CLI reports all of them
and ``FlowError`` in one line with exit status 2.
"""


class FlowError(Exception):
    """Base class for errors raised by ``flows``."""
