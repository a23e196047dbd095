"""Sequence-head training checkpoints: resume after a crash, bit-identical to an uninterrupted fit,
and `vqa fit` killed with SIGKILL in the middle of a protocol, then resumed.

The SIGKILL test runs the real command line in a subprocess on a tiny store written directly
with ``FeatureStore.write_video`` (no extraction), kills it once a per-epoch checkpoint exists,
re-runs the same command and compares its report and model with an uninterrupted run's.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from feature_store import FeatureStore
from flows.fit import STATE_DIR
from regressors.persistence import load_head
from regressors.protocols import evaluate, random_splits
from regressors.sequence import CheckpointMismatchError, SequenceRegressor, latest_checkpoint_epoch
from vqa_core.training import STATE_VERSION

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D = 6
ROOT = Path(__file__).resolve().parents[1]


class Crash(Exception):
    """Stands for the process dying after an epoch's checkpoint was written."""


def _videos(n=32, seed=0, dims=D):
    rng = np.random.default_rng(seed)
    X = []
    for _ in range(n):
        x = rng.normal(size=(int(rng.integers(3, 11)), dims)).astype(np.float32)
        x[:, 0] = rng.uniform(-2, 2) + 0.2 * x[:, 0]
        X.append(x)
    return X, np.array([x[:, 0].mean() for x in X], dtype=np.float64) + 3.0


def _crash_after(k):
    def callback(epochs_done):
        if epochs_done == k:
            raise Crash(f"killed after epoch {k}")

    return callback


def _same_fit(a: SequenceRegressor, b: SequenceRegressor, X) -> None:
    state_a, state_b = a.module_.state_dict(), b.module_.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    assert a.best_epoch_ == b.best_epoch_ and a.n_epochs_ == b.n_epochs_
    np.testing.assert_array_equal(np.array(a.history_["train_loss"]), np.array(b.history_["train_loss"]))
    np.testing.assert_array_equal(np.array(a.history_["val_srcc"]), np.array(b.history_["val_srcc"]))
    assert a.history_["lr"] == b.history_["lr"]


CASES = {
    # VSFA defaults: Adam, StepLR decaying every epoch here, standardised inputs, validation part
    "vsfa-step": dict(
        module="vsfa", lr=1e-2, epochs=7, step_size=1, gamma=0.7, batch_size=8, standardize=True, patience=None
    ),
    # AdamW, cosine with warm-up, early stopping counter, dropout (torch RNG) in A2INet's Concat+MLP
    "a2inet-dropout": dict(
        module="a2inet",
        module_params={"dims": (3, 3), "d_model": 16, "fusion": "concat_mlp", "reduced_size": 8, "hidden_size": 4},
        loss="mae_rank",
        optimizer="adamw",
        weight_decay=0.01,
        lr=2e-3,
        epochs=12,
        schedule="cosine",
        warmup_epochs=1,
        batch_size=8,
        patience=4,
    ),  # stops after 6
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("crash_after", [1, 4])
def test_resume_after_a_crash_is_bit_identical(tmp_path, case, crash_after):
    X, y = _videos()
    params = dict(CASES[case], progress=False, random_state=3)
    straight = SequenceRegressor(**params).fit(X, y)
    assert straight.n_epochs_ > crash_after

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Crash):
        SequenceRegressor(**params).fit(X, y, checkpoint_dir=ckpt, epoch_callback=_crash_after(crash_after))
    assert latest_checkpoint_epoch(ckpt) == crash_after
    assert [p.name for p in ckpt.iterdir()] == [f"epoch-{crash_after:04d}.pt"]  # older ones removed, no temporaries
    # plain containers only: loads with weights_only=True
    saved = torch.load(ckpt / f"epoch-{crash_after:04d}.pt", weights_only=True)
    assert saved["epoch"] == crash_after and saved["version"] == STATE_VERSION
    assert [set(row) for row in saved["history"]] == [
        {"train_loss", "val_srcc", "lr", "data_wait_seconds"}
    ] * crash_after

    # the global torch RNG of the caller is moved in between: the resumed fit must not care
    torch.manual_seed(12345)
    torch.rand(7)
    epochs_seen = []
    resumed = SequenceRegressor(**params).fit(X, y, checkpoint_dir=ckpt, epoch_callback=epochs_seen.append)
    assert resumed.resumed_from_epoch_ == crash_after
    assert epochs_seen == list(range(crash_after + 1, straight.n_epochs_ + 1))
    _same_fit(straight, resumed, X)

    # a finished checkpoint is kept; fitting again from it trains nothing and gives the same model
    epochs_seen.clear()
    again = SequenceRegressor(**params).fit(X, y, checkpoint_dir=ckpt, epoch_callback=epochs_seen.append)
    assert epochs_seen == [] and again.resumed_from_epoch_ == straight.n_epochs_
    _same_fit(straight, again, X)


def test_checkpoint_of_other_training_is_refused(tmp_path):
    X, y = _videos()
    params = dict(CASES["vsfa-step"], progress=False, random_state=3)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Crash):
        SequenceRegressor(**params).fit(
            X, y, checkpoint_dir=ckpt, checkpoint_key="run-a", epoch_callback=_crash_after(2)
        )
    for changed, kwargs, what in (
        (dict(params, lr=2e-2), {"checkpoint_key": "run-a"}, "parameters or training data"),
        (params, {"checkpoint_key": "run-b"}, "checkpoint key"),
    ):
        with pytest.raises(CheckpointMismatchError, match=what):
            SequenceRegressor(**changed).fit(X, y, checkpoint_dir=ckpt, **kwargs)
    y_changed = y.copy()
    y_changed[0] += 0.5
    with pytest.raises(CheckpointMismatchError, match="belongs to another training"):
        SequenceRegressor(**params).fit(X, y_changed, checkpoint_dir=ckpt, checkpoint_key="run-a")
    assert latest_checkpoint_epoch(ckpt) == 2  # refused, not overwritten

    (ckpt / "epoch-0002.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="cannot be read"):
        SequenceRegressor(**params).fit(X, y, checkpoint_dir=ckpt, checkpoint_key="run-a")
    # a checkpoint of the layout before the shared epoch loop is refused by its version, not misread
    torch.save({"format": "vqa-sequence-checkpoint", "version": 1, "epoch": 2}, ckpt / "epoch-0002.pt")
    with pytest.raises(CheckpointMismatchError, match=rf"layout version 1, this code reads {STATE_VERSION}.*delete"):
        SequenceRegressor(**params).fit(X, y, checkpoint_dir=ckpt, checkpoint_key="run-a")
    with pytest.raises(Exception, match="integer random_state"):
        SequenceRegressor(**dict(params, random_state=None)).fit(X, y, checkpoint_dir=tmp_path / "other")


def test_evaluate_resumes_a_protocol_split_by_split(tmp_path, monkeypatch):
    """Completed splits are read back (not refitted); the interrupted one resumes from its epoch."""
    X, y = _videos(30)
    head = SequenceRegressor(**dict(CASES["vsfa-step"], epochs=4, progress=False, random_state=0))
    splits = random_splits(len(X), test_size=0.3, n_repeats=3, random_state=0)
    straight = evaluate(head, X, y, splits=splits, progress=False)

    state = tmp_path / "state"
    calls = []
    real_fit = SequenceRegressor.fit

    @functools.wraps(real_fit)  # keeps fit's signature: evaluate looks for checkpoint_dir in it
    def crashing_fit(self, *args, **kwargs):
        calls.append(Path(kwargs["checkpoint_dir"]).name)
        if len(calls) == 2:  # second split: die after its second epoch
            kwargs["epoch_callback"] = _crash_after(2)
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(SequenceRegressor, "fit", crashing_fit)
    with pytest.raises(Crash):
        evaluate(head, X, y, splits=splits, progress=False, state_dir=state, state_key="k")
    monkeypatch.undo()
    assert calls == ["split-0000", "split-0001"]
    assert (state / "split-0000.json").is_file() and not (state / "split-0000").exists()
    assert latest_checkpoint_epoch(state / "split-0001") == 2

    resumed = evaluate(head, X, y, splits=splits, progress=False, state_dir=state, state_key="k")
    assert resumed.resumed_splits == [0]
    assert resumed.per_split == straight.per_split
    np.testing.assert_array_equal(resumed.predictions, straight.predictions)
    expected = [f"split-{i:04d}.{ext}" for i in range(3) for ext in ("json", "npz")]
    assert sorted(p.name for p in state.iterdir()) == expected  # split records only, no checkpoints left
    with pytest.raises(Exception, match="another run"):
        evaluate(head, X, y, splits=splits, progress=False, state_dir=state, state_key="other")


# ---------------------------------------------------------------- vqa fit, SIGKILL, resume
def _tiny_store(root: Path) -> tuple[Path, Path]:
    """A store with one feature set of 24 videos x [16, 64] and a manifest with MOS and groups."""
    store = FeatureStore(root / "store")
    spec, sampling = {"name": "probe", "dims": 64}, {"strategy": "uniform", "value": 16}
    set_id = store.ensure_feature_set(spec=spec, sampling=sampling)
    rng = np.random.default_rng(0)
    lines = ["video_id,path,mos,group"]
    for i in range(24):
        x = rng.normal(size=(16, 64)).astype(np.float32)
        x[:, 0] += rng.uniform(-2, 2)
        store.write_video(
            set_id,
            f"v{i:02d}",
            x,
            provenance={"set": {"spec": spec, "sampling": sampling}, "video": {"source": f"v{i:02d}.mp4"}},
        )
        lines.append(f"v{i:02d},v{i:02d}.mp4,{3 + x[:, 0].mean():.6f},g{i // 2}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return store.path, manifest


def _fit_cmd(store: Path, manifest: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "flows.cli",
        "fit",
        "--store",
        str(store),
        "--manifest",
        str(manifest),
        "--features",
        "probe",
        "--head",
        "vsfa",
        "--protocol",
        "a2inet",
        "--repeats",
        "2",
        "--out",
        str(out),
        "--head-param",
        "epochs=12",
        "--head-param",
        "lr=0.003",
        "--head-param",
        "batch_size=2",
        "--head-param",
        "patience=null",
        "-q",
        *extra,
    ]


def _env() -> dict:
    # one thread everywhere: results are reproducible only at a fixed thread count
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _checkpoints(out: Path) -> list[tuple[str, int]]:
    state = out / STATE_DIR
    found = []
    if state.is_dir():
        for split_dir in state.iterdir():
            if split_dir.is_dir():
                epoch = latest_checkpoint_epoch(split_dir)
                if epoch is not None:
                    found.append((split_dir.name, epoch))
    return found


def _report(out: Path) -> tuple[dict, str, dict]:
    metrics = json.loads((out / "metrics.json").read_text())
    # paths differ by design; the commit too when the checkout changes while the test runs
    metrics["settings"].pop("store"), metrics["settings"].pop("manifest"), metrics["settings"].pop("code_version")
    head, _ = load_head(out / "model")
    return metrics, (out / "predictions.csv").read_text(), head.module_.state_dict()


@pytest.mark.slow
def test_sigkilled_vqa_fit_resumes_and_matches_an_uninterrupted_run(tmp_path):
    from flows.cli import main as vqa

    store, manifest = _tiny_store(tmp_path)
    env = _env()

    # the uninterrupted run, in this process (one torch thread, as the subprocesses)
    reference = tmp_path / "reference"
    assert vqa(_fit_cmd(store, manifest, reference)[3:]) == 0
    assert not (reference / STATE_DIR).exists()  # a finished run keeps no per-epoch checkpoints

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _fit_cmd(store, manifest, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    killed_at = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            # once split 0 is finished (split 1 or the final refit has started) and a checkpoint of
            # epoch >= 1 exists
            killed_at = [(name, epoch) for name, epoch in _checkpoints(out) if name != "split-0000" and epoch >= 1]
            if killed_at:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None and not killed_at:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert killed_at and proc.returncode == -signal.SIGKILL, "the run should have been killed part-way"
    assert (out / STATE_DIR / "split-0000.json").is_file() and not (out / "model").exists()
    # what the re-run must report: read from the files the killed run left (it may have gone on a
    # few milliseconds after the checkpoint was seen)
    n_done = len(list((out / STATE_DIR).glob("split-*.json")))
    in_progress = dict(_checkpoints(out))
    assert in_progress and all(epoch >= 1 for epoch in in_progress.values())

    again = subprocess.run(_fit_cmd(store, manifest, out), env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"resuming the interrupted run in {out}: {n_done} of 2 splits already done" in again.stderr, again.stderr
    if "split-0001" in in_progress:
        assert f"split 1 continues after epoch {in_progress['split-0001']}" in again.stderr
    else:
        assert f"the final fit on all videos continues after epoch {in_progress['final']}" in again.stderr
    assert not (out / STATE_DIR).exists()

    (m_ref, p_ref, w_ref), (m_out, p_out, w_out) = _report(reference), _report(out)
    assert m_out == m_ref and p_out == p_ref
    assert all(torch.equal(w_ref[k], w_out[k]) for k in w_ref)


# ---------------------------------------------------------------- fit_job in process: UX of resume
def _fit(store, manifest, out, **kwargs):
    from flows.fit import fit_job

    messages = []
    options = dict(
        store=store,
        manifest=manifest,
        features=["probe"],
        out=out,
        head="vsfa",
        protocol="a2inet",
        n_repeats=2,
        progress=False,
        notify=messages.append,
        head_params={"epochs": 3, "lr": 3e-3, "batch_size": 4, "patience": None, "progress": False},
    )
    options.update(kwargs)
    return fit_job(**options), messages


def _crash_in_fit(monkeypatch, on_call: int, after_epoch: int):
    """Make the ``on_call``-th SequenceRegressor.fit die after epoch ``after_epoch``."""
    real_fit, calls = SequenceRegressor.fit, []

    @functools.wraps(real_fit)
    def fit(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == on_call:
            kwargs["epoch_callback"] = _crash_after(after_epoch)
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(SequenceRegressor, "fit", fit)


@pytest.mark.slow
def test_changed_configuration_refuses_to_resume_and_restart_starts_over(tmp_path, monkeypatch):
    from flows.errors import FlowError

    store, manifest = _tiny_store(tmp_path)
    reference, _ = _fit(store, manifest, tmp_path / "reference")
    out = tmp_path / "out"
    _crash_in_fit(monkeypatch, on_call=3, after_epoch=2)  # the final refit on all videos dies
    with pytest.raises(Crash):
        _fit(store, manifest, out)
    monkeypatch.undo()
    assert (out / STATE_DIR / "run.json").is_file() and not (out / "model").exists()

    with pytest.raises(FlowError, match=r"different configuration \(changed: head_params\).*--restart"):
        _fit(store, manifest, out, head_params={"epochs": 4, "lr": 3e-3, "batch_size": 4, "patience": None})
    with pytest.raises(FlowError, match=r"changed: head_params, protocol_params, seed\)"):
        _fit(store, manifest, out, seed=1)
    edited = tmp_path / "edited.csv"
    edited.write_text(manifest.read_text().replace(",3.", ",3.0", 1))  # same videos, one MOS rewritten
    with pytest.raises(FlowError, match=r"changed: manifest"):
        _fit(store, edited, out)

    metrics, messages = _fit(store, manifest, out)  # same configuration: resumes the final refit
    assert messages == [
        "resuming the interrupted run in " + str(out) + ": 2 of 2 splits already done; "
        "the final fit on all videos continues after epoch 2"
    ]
    assert metrics == reference and not (out / STATE_DIR).exists()

    with pytest.raises(Crash):
        _crash_in_fit(monkeypatch, on_call=1, after_epoch=1)
        _fit(store, manifest, tmp_path / "again")
    monkeypatch.undo()
    metrics, messages = _fit(store, manifest, tmp_path / "again", seed=1, restart=True)
    assert messages[0].startswith("discarding the interrupted run") and "--restart" in messages[0]
    assert not (tmp_path / "again" / STATE_DIR).exists() and (tmp_path / "again" / "model" / "head.json").is_file()


@pytest.mark.slow
def test_svr_protocol_resumes_without_refitting_finished_splits(tmp_path, monkeypatch):
    from regressors.svr import SVRHead

    store, manifest = _tiny_store(tmp_path)
    options = dict(head="svr", protocol="fmc", n_repeats=1, head_params={})
    reference, _ = _fit(store, manifest, tmp_path / "reference", **options)
    real_fit, calls, crash = SVRHead.fit, [], [True]

    def fit(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3 and crash[0]:
            raise Crash("killed in split 2")
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(SVRHead, "fit", fit)
    with pytest.raises(Crash):
        _fit(store, manifest, tmp_path / "out", **options)
    calls.clear()
    crash[0] = False
    metrics, messages = _fit(store, manifest, tmp_path / "out", **options)
    assert messages == [f"resuming the interrupted run in {tmp_path / 'out'}: 2 of 5 splits already done"]
    assert len(calls) == 3 + 1  # splits 2, 3, 4 and the final refit
    assert metrics == reference
    predictions = [(tmp_path / run / "predictions.csv").read_text() for run in ("out", "reference")]
    assert predictions[0] == predictions[1]


def test_a_failed_run_without_progress_does_not_block_a_corrected_one(tmp_path):
    from regressors.errors import InvalidInputError

    store, manifest = _tiny_store(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(InvalidInputError, match="epochs must be"):
        _fit(store, manifest, out, head_params={"epochs": 0})
    assert (out / STATE_DIR / "run.json").is_file()  # the run started, but no epoch finished
    metrics, messages = _fit(store, manifest, out, head_params={"epochs": 1, "progress": False})
    assert messages == [
        f"discarding the interrupted run in {out} (it had not finished any epoch yet, and its "
        "configuration differs); starting over"
    ]
    assert not (out / STATE_DIR).exists() and (out / "model" / "head.json").is_file()
