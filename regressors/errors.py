"""Exceptions raised by stage-2 code."""

from sklearn.exceptions import NotFittedError as _SklearnNotFittedError


class RegressorError(Exception):
    """Base class for every error raised by ``regressors``."""


class NotFittedError(RegressorError, _SklearnNotFittedError):
    """A head was used before ``fit``.

    Also a scikit-learn ``NotFittedError`` (itself a ``ValueError`` and an
    ``AttributeError``), as the estimator contract and its checks expect.
    """


class ModelFormatError(RegressorError, ValueError):
    """A saved head is missing, malformed, or of an unknown type or version."""


class InvalidInputError(RegressorError, ValueError):
    """Data given to a head, metric or protocol cannot be used.

    Examples: NaN or infinite values, too few samples, constant inputs, mismatched
    lengths, an unknown pooling method, or a split with too few test samples.
    """


class HeadExistsError(RegressorError, FileExistsError):
    """A saved head already exists where a new one was to be written (``overwrite=False``)."""


class TrainingError(RegressorError, RuntimeError):
    """Training a head failed: the loss became NaN or infinite (diverged)."""


class CheckpointMismatchError(RegressorError, ValueError):
    """A checkpoint directory holds training state that is not this training's, or is unreadable."""
