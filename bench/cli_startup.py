"""How fast ``vqa`` answers, as ratios to a bare ``python -c "import prefect"`` measured in the same run.

Cases, each the real program (``python -m flows.cli``) in a fresh process, median of
``--repeats`` runs (wall seconds, and CPU seconds of the process):

* ``import prefect``: the bare import, the reference (every Prefect-based command pays at least this);
* ``import pipeline.extractors``: torch + torchvision, the floor of any check of an extractor name;
* ``user error``: ``vqa extract M --store S --extractor resnet5`` (exit 2, one line);
* ``nothing to do``: ``vqa extract`` of 2 videos already in the store (exit 0, Prefect never imported);
* ``2 videos, own server``: a real extraction with no ``PREFECT_API_URL`` (vqa starts a Prefect
  server for the run; fresh ``PREFECT_HOME`` each time: the first run of a machine);
* ``2 videos, long-lived server``: the same with ``PREFECT_API_URL`` naming a server started once
  beforehand (what docs/orchestration.md recommends to data engineers).

    python bench/cli_startup.py [--repeats 3] [--no-flows]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EXTRACTOR = "resnet50-vsfa"


def timed(command: list[str], *, env: dict[str, str | None] | None = None, expect: int = 0) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``command`` (``env``: added to this process's
    environment, ``None`` values removed from it); its exit status must be ``expect``."""
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        command, env={k: v for k, v in full.items() if v is not None}, cwd=REPO, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != expect:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode} (expected {expect}):\n{done.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def median(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def median_of(repeats: int, command: list[str], **kwargs) -> tuple[float, float]:
    return median([timed(command, **kwargs) for _ in range(repeats)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-flows", action="store_true", help="skip the two cases that run a real extraction")
    args = parser.parse_args()

    from flows.orchestration import prefect_server
    from tests.helpers import make_video

    python, vqa = sys.executable, [sys.executable, "-m", "flows.cli"]
    # no PREFECT_API_URL unless a case names the long-lived server (prefect_server() exports it here)
    offline = {"VQA_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": None}
    results: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="vqa-bench-cli-") as tmp:
        work = Path(tmp)
        rows = [f"v{i},{make_video(work / f'v{i}.mp4', 8, width=64, height=48)}" for i in range(2)]
        manifest = work / "manifest.csv"
        manifest.write_text("video_id,path\n" + "\n".join(rows) + "\n")
        extract = [
            *vqa,
            "extract",
            str(manifest),
            "--extractor",
            EXTRACTOR,
            "--weights",
            "random",
            "--sampling",
            "uniform:2",
            "--device",
            "cpu",
            "-q",
        ]

        results["import prefect"] = median_of(args.repeats, [python, "-c", "import prefect"])
        results["import pipeline.extractors"] = median_of(args.repeats, [python, "-c", "import pipeline.extractors"])
        results["user error"] = median_of(
            args.repeats,
            [*vqa, "extract", str(manifest), "--store", str(work / "s0"), "--extractor", "resnet5"],
            env=offline,
            expect=2,
        )
        with prefect_server(database=work / "prefect" / "prefect.db") as server:
            long_lived = {**offline, "PREFECT_API_URL": server.api_url}
            timed([*extract, "--store", str(work / "done")], env=long_lived)  # fills the store once
            results["nothing to do"] = median_of(args.repeats, [*extract, "--store", str(work / "done")], env=offline)
            if not args.no_flows:  # a store of its own per run: each one extracts both videos
                results["2 videos, own server"] = median(
                    [
                        timed(
                            [*extract, "--store", str(work / f"own{i}")],
                            env={**offline, "PREFECT_HOME": str(work / f"home{i}")},
                        )
                        for i in range(args.repeats)
                    ]
                )
                results["2 videos, long-lived server"] = median(
                    [timed([*extract, "--store", str(work / f"long{i}")], env=long_lived) for i in range(args.repeats)]
                )

    reference = results["import prefect"][0]
    print(f"vqa start-up, median of {args.repeats} (load average now {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs)")
    print(f"{'case':<30} {'wall s':>8} {'CPU s':>7} {'/ import prefect':>17}")
    for case, (wall, cpu) in results.items():
        print(f"{case:<30} {wall:8.2f} {cpu:7.2f} {wall / reference:16.2f}x")


if __name__ == "__main__":
    main()
