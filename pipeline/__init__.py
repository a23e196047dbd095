"""Stage 1: decoding, sampling, frozen-backbone feature extraction. No Prefect here."""

__version__ = "0.1.0"
