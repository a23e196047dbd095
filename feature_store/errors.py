"""Exceptions raised by the feature store (zarr style: each subclasses a builtin)."""


class FeatureStoreError(Exception):
    """Base class for every error raised by ``feature_store``."""


class FeatureNotFoundError(FeatureStoreError, KeyError):
    """A feature set or a video is not (completely) stored."""

    def __str__(self) -> str:
        return str(self.args[0])


class ProvenanceMismatchError(FeatureStoreError, ValueError):
    """Features were made differently from what the caller expects or from each other."""


class InvalidFeaturesError(FeatureStoreError, ValueError):
    """Features have the wrong shape or dtype, or contain NaN/Inf."""


class InvalidMetadataError(FeatureStoreError, ValueError):
    """A spec, sampling, provenance or video id is not of the expected form.

    Metadata must be JSON (str keys; str, finite numbers, bool, None, lists, dicts) so that
    it can be hashed canonically and stored in Zarr attributes; video ids must be non-empty
    strings encodable as UTF-8.
    """


class OutputExistsError(FeatureStoreError, FileExistsError):
    """An output file exists and ``overwrite=False`` was given."""
