"""Feature-store scale: how writes, info, verify, reads and the file count grow with the number
of stored videos, per layout; and how Prefect's history database grows per task run.

A synthetic store of small videos ([--steps, --dims], half zeros, distinct values) is written
through the real API (``FeatureStore.write_video``), one video at a time as the extraction
flow does. The store grows to each size in turn (``--sizes`` for the packed layout,
``--nodes-sizes`` for the "nodes" layout); at each size it measures

* write: the median cost of one ``write_video`` over the first and the last ``--window``
  writes, wall time and this process's CPU time (on a shared machine the wall time also
  holds waits for a core; the done-when of issue 17: the last write costs what the first
  did, +-20%);
* entries: files + folders under the store, per video (done-when: at most 1);
* open: a new process's first lookup (the packed index is built once per process);
* info / verify (all data read and checked) / read (every video, ``read_video``);

and, at the largest size, the same ``--window`` writes alternately into an empty set and into
the full one (the fairest comparison on a shared machine). Then it prints the growth exponent
``b`` of each operation between the two largest sizes (time ~ n^b; b = 1 is linear in the
store, b = 0 is independent of it) and its projection to ``--project`` videos (40,000: about
LSVQ). Finally tiny Prefect flows of ``--tasks-small`` and
``--tasks`` tasks (twice each, after one of 0 tasks) run in a subprocess against a temporary
``PREFECT_HOME``; the sqlite database's used bytes after each (checkpointed, once the server
has stored the flow's events) give, by a least-squares line, the bytes per task run and per
flow run.

    python bench/store_scale.py [--sizes 2000 8000] [--nodes-sizes 250 1000] [--tasks 50]
        [--steps 16 --dims 256 --dtype float32] [--project 40000] [--tmp DIR]

LSVQ-like videos: ``--steps 128 --dims 7680 --dtype float16 --sizes 100 400 --nodes-sizes 100 400``.

Default run: about 3 minutes on 2 busy cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feature_store import FeatureStore, _packs, verify  # noqa: E402

SET_PROVENANCE = {"code_version": "bench", "weights": "random:0", "torch": "2"}


def entries(root: Path) -> int:
    """Files and folders under ``root``."""
    return sum(len(dirs) + len(files) for _dir, dirs, files in os.walk(root))


def video(i: int, steps: int, dims: int) -> np.ndarray:
    """Distinct ReLU-like features (half zeros, as CNN activations), float32 [steps, dims]."""
    rng = np.random.default_rng(i)
    return np.maximum(rng.standard_normal((steps, dims), dtype=np.float32), 0)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def grow(layout: str, sizes: list[int], args, root: Path) -> list[dict]:
    """Write one store up to each size in turn; measure at each size."""
    store = FeatureStore(root)
    set_id = store.ensure_feature_set(
        spec={"name": "bench", "dims": args.dims},
        sampling={"strategy": "uniform", "value": 16},
        layout=layout,
        dtype=args.dtype,
    )
    rows: list[dict] = []
    written = 0
    for n in sizes:
        costs, cpu = [], []
        for i in range(written, n):
            x = video(i, args.steps, args.dims)
            provenance = {
                "set": SET_PROVENANCE,
                "video": {"source": {"path": f"/data/videos/{i:06d}.mp4", "size": 1000 + i}, "steps": 16},
            }
            start, start_cpu = time.perf_counter(), time.process_time()
            store.write_video(set_id, f"{i:06d}.mp4", x, provenance=provenance)
            costs.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        first = statistics.median(costs[: args.window]) if written == 0 else rows[0]["write_first_ms"] / 1e3
        last = statistics.median(costs[-args.window :])
        # CPU time of this process: what a write costs, without the waits for a core that other
        # work on a shared machine adds to wall time
        first_cpu = statistics.median(cpu[: args.window]) if written == 0 else rows[0]["cpu_first_ms"] / 1e3
        last_cpu = statistics.median(cpu[-args.window :])
        written = n
        _packs._indexes.clear()  # what a new process sees
        fresh = FeatureStore(root, create=False)
        t_open = timed(lambda f=fresh: f.has_video(set_id, "000000.mp4"))
        t_info = timed(lambda f=fresh: f.info())
        report = None

        def check(f=fresh):
            nonlocal report
            report = verify(f)

        t_verify = timed(check)
        assert report.ok and report.n_videos[set_id] == n, str(report)

        def read_all(f=fresh, n=n) -> None:
            for i in range(n):  # one video at a time, not kept (memory stays flat)
                f.read_video(set_id, f"{i:06d}.mp4")

        t_read = timed(read_all)
        rows.append(
            {
                "layout": layout,
                "n": n,
                "write_first_ms": first * 1e3,
                "write_last_ms": last * 1e3,
                "cpu_first_ms": first_cpu * 1e3,
                "cpu_last_ms": last_cpu * 1e3,
                "write_total_s": sum(costs) + (rows[-1]["write_total_s"] if rows else 0.0),  # from empty
                "entries_per_video": entries(root) / n,
                "open_s": t_open,
                "info_s": t_info,
                "verify_s": t_verify,
                "read_s": t_read,
                "bytes_per_video": sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / n,
            }
        )
        print(
            f"  {layout:<6} n={n:>6}: write {first * 1e3:6.2f} ms (first) {last * 1e3:6.2f} ms (last), CPU "
            f"{first_cpu * 1e3:.2f} / {last_cpu * 1e3:.2f} ms, "
            f"{rows[-1]['entries_per_video']:.3f} entries/video, open {t_open:.2f} s, info {t_info:.2f} s, "
            f"verify {t_verify:.2f} s, read {t_read:.2f} s",
            flush=True,
        )
    # the same writes into an empty set and into the full one, alternately: load from other
    # processes hits both alike
    probe = FeatureStore(root.with_name(root.name + "-probe"))
    probe_set = probe.ensure_feature_set(
        spec={"name": "bench", "dims": args.dims},
        sampling={"strategy": "uniform", "value": 16},
        layout=layout,
        dtype=args.dtype,
    )
    empty, full = [], []
    for k in range(args.window):
        x = video(10**6 + k, args.steps, args.dims)
        for target, sid, times in ((probe, probe_set, empty), (store, set_id, full)):
            start = time.perf_counter()
            target.write_video(sid, f"probe-{k:04d}.mp4", x, provenance={"set": SET_PROVENANCE})
            times.append(time.perf_counter() - start)
    rows[-1]["probe_empty_ms"] = statistics.median(empty) * 1e3
    rows[-1]["probe_full_ms"] = statistics.median(full) * 1e3
    print(
        f"  {layout:<6} interleaved: a write into an empty set {rows[-1]['probe_empty_ms']:.2f} ms, into the set "
        f"of {rows[-1]['n']} videos {rows[-1]['probe_full_ms']:.2f} ms "
        f"(ratio {rows[-1]['probe_full_ms'] / rows[-1]['probe_empty_ms']:.2f})",
        flush=True,
    )
    shutil.rmtree(root.with_name(root.name + "-probe"))
    return rows


def exponent(rows: list[dict], key: str) -> float:
    a, b = rows[-2], rows[-1]
    if a[key] <= 0 or b[key] <= 0:
        return float("nan")
    return math.log(b[key] / a[key]) / math.log(b["n"] / a["n"])


PREFECT_SCRIPT = textwrap.dedent("""
    import json, sqlite3, sys, time
    from pathlib import Path
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    @task(name="bench-task", cache_policy=NO_CACHE)
    def tiny(i: int) -> dict:
        return {"video_id": f"{i:06d}.mp4", "status": "done", "frames": 16}

    @flow(name="bench-flow")
    def many(n: int) -> int:
        return sum(tiny(i)["frames"] for i in range(n))

    def used_bytes(db):
        # pages in use after a checkpoint (the server may hold the database: retry while busy)
        with sqlite3.connect(db, timeout=30) as con:
            for _ in range(50):
                busy, _log, _done = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy:
                    break
                time.sleep(0.2)
            page, pages, free = (con.execute(f"PRAGMA {p}").fetchone()[0]
                                 for p in ("page_size", "page_count", "freelist_count"))
        return (pages - free) * page

    def settled(db):
        # the server stores events and logs shortly after the flow returns: wait for quiet
        last, same = -1, 0
        for _ in range(30):
            now = used_bytes(db)
            same = same + 1 if now == last else 0
            if same == 2:
                break
            last = now
            time.sleep(1.0)
        return now

    db = Path(sys.argv[1]) / "prefect.db"
    out = []
    for n in map(int, sys.argv[2:]):
        start = time.perf_counter()
        many(n)
        seconds = time.perf_counter() - start
        out.append({"tasks": n, "used_bytes": settled(db), "seconds": seconds})
    print(json.dumps(out))
""")


def prefect_growth(counts: list[int], tmp: Path) -> list[dict]:
    """Run flows of ``counts`` tasks one after the other in one process against a temporary
    PREFECT_HOME (its ephemeral server and sqlite database); return the database's used bytes
    after each."""
    home = tmp / "prefect_home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    script = tmp / "flow.py"
    script.write_text(PREFECT_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(home), *map(str, counts)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000], help="packed layout sizes")
    parser.add_argument(
        "--nodes-sizes",
        type=int,
        nargs="*",
        default=[250, 1000],
        help="'nodes' layout sizes (slow: ~20 ms per write); none to skip",
    )
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="storage dtype")
    parser.add_argument("--window", type=int, default=200, help="writes per first/last median")
    parser.add_argument("--project", type=int, default=40_000, help="project the figures to this many videos")
    parser.add_argument("--tasks", type=int, default=50, help="Prefect task runs of the large flow (0: skip)")
    parser.add_argument("--tasks-small", type=int, default=10, help="task runs of the small flow")
    parser.add_argument("--tmp", default=None, help="folder for the stores (default: $TMPDIR)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    print(
        f"videos of [{args.steps}, {args.dims}] stored as {args.dtype}; per-write medians over {args.window} writes",
        flush=True,
    )
    results = {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for layout, sizes in (("packed", sorted(args.sizes)), ("nodes", sorted(args.nodes_sizes))):
            if sizes:
                results[layout] = grow(layout, sizes, args, Path(tmp) / layout)
                shutil.rmtree(Path(tmp) / layout)
        counts = [0, args.tasks_small, args.tasks, args.tasks_small, args.tasks]
        prefect = prefect_growth(counts, Path(tmp)) if args.tasks else None

    print()
    header = (
        f"{'layout':<7}{'videos':>8}{'write first':>12}{'write last':>11}{'last/first':>11}{'CPU l/f':>8}"
        f"{'entries/vid':>12}{'KB/video':>9}{'open s':>8}{'info s':>8}{'verify s':>9}{'read s':>8}"
    )
    print(header)
    print("-" * len(header))
    for rows in results.values():
        for r in rows:
            print(
                f"{r['layout']:<7}{r['n']:>8}{r['write_first_ms']:>10.2f}ms{r['write_last_ms']:>9.2f}ms"
                f"{r['write_last_ms'] / r['write_first_ms']:>11.2f}{r['cpu_last_ms'] / r['cpu_first_ms']:>8.2f}"
                f"{r['entries_per_video']:>12.3f}"
                f"{r['bytes_per_video'] / 1e3:>9.1f}{r['open_s']:>8.2f}{r['info_s']:>8.2f}"
                f"{r['verify_s']:>9.2f}{r['read_s']:>8.2f}"
            )
    print()
    for layout, rows in results.items():
        r = rows[-1]
        print(
            f"{layout}: one write into an empty set {r['probe_empty_ms']:.2f} ms, into the set of {r['n']} videos "
            f"{r['probe_full_ms']:.2f} ms (ratio {r['probe_full_ms'] / r['probe_empty_ms']:.2f}; "
            f"{args.window} interleaved pairs)"
        )
    for layout, rows in results.items():
        if len(rows) < 2:
            continue
        n2 = rows[-1]["n"]
        print(
            f"{layout}: growth exponents b (time ~ n^b) between {rows[-2]['n']} and {n2} videos, "
            f"projected to {args.project}:"
        )
        for key, label in (
            ("write_last_ms", "one write"),
            ("cpu_last_ms", "write CPU"),
            ("write_total_s", "all writes"),
            ("open_s", "open"),
            ("info_s", "info"),
            ("verify_s", "verify"),
            ("read_s", "read all"),
        ):
            b = exponent(rows, key)
            scale = (args.project / n2) ** b if math.isfinite(b) else float("nan")
            unit = "ms" if key.endswith("_ms") else "s"
            print(
                f"  {label:<11} b = {b:5.2f}   {rows[-1][key]:9.2f} {unit} at {n2} -> "
                f"{rows[-1][key] * scale:9.2f} {unit} at {args.project}"
            )
    if prefect:
        # each flow adds F + n*T bytes: a least-squares line through the flows' growths
        tasks = np.array([f["tasks"] for f in prefect[1:]], dtype=float)
        grown = np.diff([f["used_bytes"] for f in prefect]).astype(float)
        per_task, per_flow = np.polyfit(tasks, grown, 1)
        big = max(prefect[1:], key=lambda f: f["tasks"])
        print(
            f"\nPrefect history database (sqlite, used pages after a checkpoint): flows of "
            f"{', '.join(str(int(n)) for n in tasks)} tasks grew it by "
            f"{', '.join(f'{g / 1e3:.0f}' for g in grown)} KB: {per_task / 1e3:.1f} KB per task run "
            f"{per_flow / 1e3:+.1f} KB per flow run; {prefect[-1]['used_bytes'] / 1e6:.2f} MB in all; "
            f"{args.project} task runs: {per_task * args.project / 1e6:.0f} MB; {big['seconds']:.1f} s for a "
            f"{big['tasks']}-task flow"
        )


if __name__ == "__main__":
    main()
