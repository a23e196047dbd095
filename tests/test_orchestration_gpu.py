"""One Dask worker per GPU: a local cluster started for extraction on a machine with N CUDA
devices pins worker ``rank`` to GPU ``rank % N`` (``CUDA_VISIBLE_DEVICES``, set by its nanny
before the worker process starts) and declares ``GPU=1``; video tasks ask for ``GPU=1``.

There is no GPU here: ``torch.cuda`` is faked for the planning code, and the real LocalCluster
test checks each worker process's environment and resources (CUDA is never initialised)."""

import os

import pytest
import torch

import flows.orchestration as orchestration
from flows.cli import build_parser
from flows.cli_flows import _dask_options
from flows.orchestration import make_task_runner, task_resources
from pipeline.runner import gpu_worker_count, gpu_worker_envs, pins_gpus


@pytest.fixture
def fake_gpus(monkeypatch):
    """``fake_gpus(n)``: torch sees ``n`` CUDA devices (0: none); CUDA_VISIBLE_DEVICES unset."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def install(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return install


def test_each_worker_gets_its_own_gpu(fake_gpus, monkeypatch):
    fake_gpus(2)
    assert gpu_worker_envs(2) == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in gpu_worker_envs(5, device="cuda")] == ["0", "1", "0", "1", "0"]
    assert gpu_worker_count("auto") == gpu_worker_count("cuda") == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")  # the parent's selection is handed out, not 0..N-1
    assert gpu_worker_envs(2) == [{"CUDA_VISIBLE_DEVICES": "4"}, {"CUDA_VISIBLE_DEVICES": "6"}]


def test_no_pinning_on_the_cpu_or_for_an_explicit_gpu(fake_gpus):
    fake_gpus(0)
    assert gpu_worker_envs(3) == [{}, {}, {}] and gpu_worker_count() == 1
    fake_gpus(4)
    for device in ("cpu", "cuda:1"):
        assert not pins_gpus(device)
        assert gpu_worker_envs(2, device=device) == [{}, {}] and gpu_worker_count(device) == 1
    assert pins_gpus(None) and pins_gpus("auto") and pins_gpus("CUDA")
    with pytest.raises(ValueError, match="positive integer"):
        gpu_worker_envs(0)


def test_a_local_cluster_on_a_gpu_machine_pins_one_worker_per_gpu(fake_gpus):
    fake_gpus(2)
    runner = make_task_runner(n_workers=2, device="auto")
    kwargs = runner.cluster_kwargs
    assert runner.cluster_class == "distributed.LocalCluster"
    assert kwargs["worker_class"] == "flows.orchestration.gpu_pinned_nanny" and kwargs["gpu_ids"] == ["0", "1"]
    assert kwargs["resources"] == {"GPU": 1.0} and kwargs["n_workers"] == 2 and kwargs["threads_per_worker"] == 1
    assert task_resources(runner) == {"GPU": 1.0}  # each video task takes one GPU
    assert task_resources(runner, {"GPU": 2.0}) == {"GPU": 2.0}  # an explicit --dask-resource wins
    explicit = make_task_runner(n_workers=3, device="cuda", resources={"GPU": 1, "MEM": 2})
    assert explicit.cluster_kwargs["gpu_ids"] == ["0", "1", "0"]
    assert explicit.cluster_kwargs["resources"] == {"GPU": 1, "MEM": 2}


def test_cpu_behaviour_is_unchanged(fake_gpus):
    fake_gpus(0)
    cpu_machine = make_task_runner(n_workers=2).cluster_kwargs
    fake_gpus(2)
    cpu_device = make_task_runner(n_workers=2, device="cpu").cluster_kwargs
    for kwargs in (cpu_machine, cpu_device):
        assert "worker_class" not in kwargs and "gpu_ids" not in kwargs and "resources" not in kwargs
    assert cpu_machine == cpu_device
    assert task_resources(make_task_runner(n_workers=2, device="cpu")) is None
    assert task_resources(make_task_runner(address="tcp://10.0.0.1:8786")) is None  # remote: workers declare
    assert task_resources(None) is None


def test_dask_workers_auto_starts_one_worker_per_gpu(fake_gpus):
    parser = build_parser()
    args = ["extract", "m.csv", "--store", "s", "--extractor", "resnet50", "--dask-workers", "auto"]
    fake_gpus(3)
    assert _dask_options(parser.parse_args(args))["n_workers"] == 3
    assert _dask_options(parser.parse_args(args + ["--device", "cpu"]))["n_workers"] == 1
    assert _dask_options(parser.parse_args(args[:-1] + ["2"]))["n_workers"] == 2
    fake_gpus(0)
    assert _dask_options(parser.parse_args(args))["n_workers"] == 1
    with pytest.raises(SystemExit):
        parser.parse_args(args[:-1] + ["many"])


@pytest.mark.slow
def test_the_pinned_cluster_starts_workers_that_each_see_one_gpu(fake_gpus):
    """Start the LocalCluster exactly as the task runner would (its cluster_kwargs), and ask the
    worker processes what they see."""
    from distributed import Client, LocalCluster

    fake_gpus(2)
    kwargs = make_task_runner(n_workers=2, device="auto").cluster_kwargs
    with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        # os.getenv pickles by reference: the workers need not import this module (and torch)
        visible = client.run(os.getenv, "CUDA_VISIBLE_DEVICES")
        threads = client.run(os.getenv, "OMP_NUM_THREADS")
        info = client.scheduler_info(n_workers=-1)["workers"]
        names = {address: worker["name"] for address, worker in info.items()}
        assert sorted((names[a], gpu) for a, gpu in visible.items()) == [(0, "0"), (1, "1")]
        assert set(threads.values()) == {kwargs["env"]["OMP_NUM_THREADS"]}
        assert [worker["resources"] for worker in info.values()] == [{"GPU": 1.0}] * 2
        assert os.environ.get("CUDA_VISIBLE_DEVICES") is None  # the submitting process is not pinned


def test_the_nanny_factory_wraps_ranks_round_robin(monkeypatch):
    made = []

    class FakeNanny:
        def __init__(self, address, **options):
            made.append((address, options))

    import distributed

    monkeypatch.setattr(distributed, "Nanny", FakeNanny)
    for rank in (0, 1, 2):
        orchestration.gpu_pinned_nanny(
            "tcp://s:1", name=rank, gpu_ids=["3", "5"], env={"OMP_NUM_THREADS": "4"}, nthreads=1
        )
    assert [options["env"]["CUDA_VISIBLE_DEVICES"] for _, options in made] == ["3", "5", "3"]
    assert all(options["env"]["OMP_NUM_THREADS"] == "4" and options["nthreads"] == 1 for _, options in made)
