"""Test-wide settings: never touch the network, never use the user's torch cache, leave no
process behind."""

import os
import uuid

import pytest

os.environ["VQA_OFFLINE"] = "1"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# Every process this session starts inherits the mark, also those re-parented to PID 1 when
# their parent was killed: the session's end finds them all (tests.helpers.marked_processes).
os.environ["VQA_TEST_SESSION"] = uuid.uuid4().hex
LEFTOVER_GRACE_S = 20.0  # servers and workers shut down in a few seconds once their run ends


def pytest_collection_modifyitems(config, items):
    """Tests that start a Prefect server or run ``vqa`` in subprocesses are slow by nature
    (15-60 s of start-up each on 2 cores): marked ``slow`` here, so that ``make test-fast``
    (``-m "not slow"``) leaves them out. Other slow tests carry ``@pytest.mark.slow``."""
    slow = pytest.mark.slow
    for item in items:
        if "prefect_harness" in getattr(item, "fixturenames", ()):
            item.add_marker(slow)
        elif item.nodeid.startswith("tests/test_orchestration.py") and "server" in item.fixturenames:
            item.add_marker(slow)  # that module's own real server (its `server` fixture)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    """Fail the run when a process the tests started (a Prefect server, a Dask worker, a `vqa`
    child) is still alive at the end; it is killed, and listed."""
    if hasattr(session.config, "workerinput"):  # a pytest-xdist worker: the controller checks
        return
    from tests.helpers import marked_processes, wait_gone

    left = wait_gone(marked_processes(os.environ["VQA_TEST_SESSION"]), timeout=LEFTOVER_GRACE_S)
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"{len(left)} process(es) started by the tests outlived them (killed now):"]
    for proc, command in left:
        lines.append(f"  pid {proc.pid}: {command}")
        proc.kill()
    if reporter is not None:
        reporter.write("\n")
        for line in lines:
            reporter.write_line(line, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and results are only reproducible at a fixed
    thread count; modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
