"""Exceptions raised by ``vqa_core``. Each subclasses the matching builtin."""


class CoreError(Exception):
    """Base class for every error raised by ``vqa_core`` (the manifest, the registry)."""


class ManifestError(CoreError, ValueError):
    """A manifest is unreadable or invalid; the message lists every problem found."""


class ManifestExistsError(CoreError, FileExistsError):
    """A manifest (or a file written with it) exists and overwriting was not asked for."""


class DuplicateRegistrationError(CoreError, ValueError):
    """A name is registered twice in one registry (a programming error, not a user's)."""


class CheckpointError(CoreError, ValueError):
    """A training checkpoint is unreadable, of another format or layout version, or of another
    training (``vqa_core.training.Checkpointer``; trainers pass their own package's error)."""
