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
        return (type(self), (self.path, self.cause), self.__dict__)  # with attributes added later (notes)


class SamplingError(PipelineError, ValueError):
    """A sampling specification is malformed or cannot be applied to a video."""


class DatasetError(PipelineError, ValueError):
    """A dataset folder or its label files cannot be turned into a manifest.

    ``problems`` lists every problem found (the message summarises them by kind); nothing was
    written.
    """

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems is not None else [message]


class UnknownDatasetError(PipelineError, KeyError):
    """No dataset adapter is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class ComputeOptionError(PipelineError, ValueError):
    """An extractor's compute options (``precision``, ``channels_last``) are unknown or do not
    suit its device (fp16 needs CUDA; bf16 on CUDA needs a GPU that supports it)."""


class ExtractorOptionError(PipelineError, ValueError):
    """An extractor builder option (``resampler``, ``short_side``, ``size``, crop size...) is invalid."""


class UnknownExtractorError(PipelineError, KeyError):
    """No extractor is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class FinetuneError(PipelineError, ValueError):
    """Fine-tuning inputs are invalid (data, split, recipe, overrides) or a saved state does not fit."""


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
