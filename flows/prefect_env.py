"""Prefect settings that must be in the environment before ``prefect`` is first imported.

The embedded local server needs more than Prefect's default 20 s to start on a 2-core
machine (ECOSYSTEM.md), and its analytics only add noise. ``setdefault``: a user's own
settings always win.
"""

import os

PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def apply_prefect_defaults() -> None:
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)


apply_prefect_defaults()
