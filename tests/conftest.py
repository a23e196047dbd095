"""Test-wide settings: never touch the network, never use the user's torch cache."""
import os

import pytest

os.environ["VQA_OFFLINE"] = "1"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


@pytest.fixture(autouse=True)
def _isolated_torch_cache(tmp_path_factory, monkeypatch):
    """Weights lookups see an empty cache unless a test puts a file there."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session (~15 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
