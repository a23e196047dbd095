"""Exceptions raised by stage-1 code. Each subclasses the matching builtin."""


class PipelineError(Exception):
    """Base class for every error raised by ``pipeline``."""


class VideoDecodeError(PipelineError, ValueError):
    """A video cannot be read: missing, empty, truncated, not a video, or no frames.

    ``path`` names the file and ``cause`` says what is wrong with it.
    """

    def __init__(self, path, cause: str):
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")

    def __reduce__(self):  # picklable, so the error crosses process boundaries (Dask workers) intact
        return (type(self), (self.path, self.cause))


class SamplingError(PipelineError, ValueError):
    """A sampling specification is malformed or cannot be applied to a video."""


class ComputeOptionError(PipelineError, ValueError):
    """An extractor's compute options (``precision``, ``channels_last``) are unknown or do not
    suit its device (fp16 needs CUDA; bf16 on CUDA needs a GPU that supports it)."""


class UnknownExtractorError(PipelineError, KeyError):
    """No extractor is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class WeightsError(PipelineError, RuntimeError):
    """Weights cannot be resolved or do not fit the model they are meant for."""


class WeightsUnavailableError(WeightsError):
    """Pretrained weights are not available locally and cannot be downloaded."""


class ExtractorOutOfMemoryError(PipelineError, MemoryError):
    """An extractor ran out of (GPU) memory even on a batch of one step.

    The runner halves an extractor's batch on each out-of-memory error and retries; this is
    raised when a single step does not fit. ``extractor`` names it, ``device`` is where it ran.
    """

    def __init__(self, message: str, *, extractor: str = "", device: str = ""):
        super().__init__(message)
        self.extractor = extractor
        self.device = device
