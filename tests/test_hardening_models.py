"""Hardening, tampered model folders (docs/hardening.md, "Tampered models").

The saved-head format (``head.json`` + ``head.npz``) is pickle-free; these tests edit a saved
head the way an attacker or a damaged disk would and check that ``load_head`` refuses it with
``ModelFormatError`` naming the problem, before any large allocation, and that ``vqa predict``
never writes a non-finite score.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from regressors.errors import InvalidInputError, ModelFormatError
from regressors.persistence import ARRAYS_FILE, META_FILE, load_head, save_head
from regressors.sequence import SequenceRegressor
from regressors.svr import SVRHead

REPO = Path(__file__).resolve().parents[1]
D = 5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _videos(n=16, seed=0):
    rng = np.random.default_rng(seed)
    X = [rng.normal(size=(int(rng.integers(2, 6)), D)).astype(np.float32) for _ in range(n)]
    return X, np.array([x[:, 0].mean() for x in X]) + 3.0


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An SVR and a small VSFA-style sequence head, each saved once; tests tamper with copies."""
    X, y = _videos()
    root = tmp_path_factory.mktemp("models")
    svr = SVRHead().fit(X, y)
    sequence = SequenceRegressor(
        module="vsfa", epochs=1, batch_size=8, progress=False, patience=None, val_fraction=0.25
    ).fit(X, y)
    save_head(svr, root / "svr", feature_info={"dims": D})
    save_head(sequence, root / "sequence", feature_info={"dims": D})
    return root, X


def copy_of(saved, name: str, tmp_path: Path) -> Path:
    root, _ = saved
    target = tmp_path / name
    target.mkdir(parents=True)
    for file in (META_FILE, ARRAYS_FILE):
        (target / file).write_bytes((root / name / file).read_bytes())
    return target


def edit_meta(folder: Path, edit) -> None:
    doc = json.loads((folder / META_FILE).read_text())
    edit(doc)
    (folder / META_FILE).write_text(json.dumps(doc))


def edit_arrays(folder: Path, edit) -> None:
    """Rewrite head.npz with ``edit(arrays)`` applied; head.json's declared shapes follow."""
    with np.load(folder / ARRAYS_FILE, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    edit(arrays)
    np.savez(folder / ARRAYS_FILE, **arrays)
    edit_meta(
        folder,
        lambda doc: doc.__setitem__(
            "arrays", {k: {"shape": list(v.shape), "dtype": v.dtype.str} for k, v in arrays.items()}
        ),
    )


def test_untampered_heads_load_and_predict_the_same(saved):
    root, X = saved
    for name in ("svr", "sequence"):
        head, info = load_head(root / name)
        assert info == {"dims": D} and np.all(np.isfinite(head.predict(X)))


@pytest.mark.parametrize(
    "name, array", [("svr", "dual_coef"), ("svr", "support_vectors"), ("sequence", "module.fc0.weight")]
)
def test_nan_or_inf_in_an_array_is_refused(saved, tmp_path, name, array):
    folder = copy_of(saved, name, tmp_path)
    with np.load(folder / ARRAYS_FILE) as npz:
        if array not in npz.files:  # the module's first layer, whatever it is called
            array = next(k for k in npz.files if k.startswith("module.") and k.endswith("weight"))

    def poison(arrays):
        arrays[array] = arrays[array].copy()
        arrays[array].flat[0] = np.nan
        arrays[array].flat[-1] = np.inf

    edit_arrays(folder, poison)
    with pytest.raises(ModelFormatError, match=rf"array {array!r} has 1 NaN and 1 inf value"):
        load_head(folder)


@pytest.mark.parametrize("key", ["y_scale", "intercept", "gamma"])
def test_non_finite_numbers_in_head_json_are_refused(saved, tmp_path, key):
    folder = copy_of(saved, "svr", tmp_path)
    text = (folder / META_FILE).read_text()
    doc = json.loads(text)
    doc["state"][key] = 0.5  # a marker to replace with a bare NaN / 1e999 (what json.dumps will not write)
    for bad in ("NaN", "-Infinity", "1e999"):
        (folder / META_FILE).write_text(json.dumps(doc).replace(f'"{key}": 0.5', f'"{key}": {bad}'))
        with pytest.raises(ModelFormatError, match="non-finite number"):
            load_head(folder)


def test_zero_or_negative_scales_are_refused(saved, tmp_path):
    folder = copy_of(saved, "svr", tmp_path)
    edit_arrays(
        folder, lambda a: a.__setitem__("x_scale", np.where(np.arange(a["x_scale"].size) == 2, 0.0, a["x_scale"]))
    )
    with pytest.raises(ModelFormatError, match="x_scale must be positive"):
        load_head(folder)
    folder = copy_of(saved, "svr", tmp_path / "y")
    edit_meta(folder, lambda doc: doc["state"].__setitem__("y_scale", 0.0))
    with pytest.raises(ModelFormatError, match="y_scale must be positive"):
        load_head(folder)
    folder = copy_of(saved, "sequence", tmp_path / "seq")
    edit_meta(folder, lambda doc: doc["state"].__setitem__("label_scale", 0.0))
    with pytest.raises(ModelFormatError, match="label_scale must be positive"):
        load_head(folder)


def test_arrays_consistent_with_each_other_but_not_with_n_features_in_are_refused(saved, tmp_path):
    """The review's case: every array reshaped to 7 features, n_features_in still 5. Before,
    load succeeded and predict ended in a raw broadcasting ValueError."""
    folder = copy_of(saved, "svr", tmp_path)

    def widen(arrays):
        for key in ("x_center", "x_scale"):
            arrays[key] = np.resize(arrays[key], 7)
        arrays["support_vectors"] = np.resize(arrays["support_vectors"], (arrays["support_vectors"].shape[0], 7))

    edit_arrays(folder, widen)
    with pytest.raises(ModelFormatError, match=r"x_center has 7 features, the head declares n_features_in 5"):
        load_head(folder)


def test_features_of_another_width_are_a_clear_input_error(saved):
    root, X = saved
    head, _ = load_head(root / "svr")
    with pytest.raises(InvalidInputError, match="X has 6 features, but SVRHead is expecting 5"):
        head.predict([np.ones((3, 6))])


@pytest.mark.slow
@pytest.mark.parametrize("n_features_in", [4_000_000, 1_000_000_000])
def test_a_huge_n_features_in_is_refused_before_allocating(saved, tmp_path, n_features_in):
    """The review's case: n_features_in 4e6 made load allocate 2.6 GB (the first layer at that
    width) before refusing; 1e9 ended in an allocation traceback. Now the module is laid out
    on torch's meta device (no memory) and compared with the saved arrays first."""
    folder = copy_of(saved, "sequence", tmp_path)
    edit_meta(folder, lambda doc: doc["state"].__setitem__("n_features_in", n_features_in))
    growth_kib, message = _load_in_fresh_process(folder)
    assert message.startswith("ModelFormatError") and "do not fit" in message, message
    assert f"{n_features_in}" in message
    assert growth_kib < 200 * 1024, growth_kib  # the layer alone would be 2 GB at 4e6 features


@pytest.mark.slow
def test_an_array_declaring_more_data_than_its_file_holds_is_refused(saved, tmp_path):
    """A 1 KB npz member whose .npy header declares [1e9, 64] float64 (512 GB)."""
    folder = copy_of(saved, "svr", tmp_path)
    with zipfile.ZipFile(folder / ARRAYS_FILE) as npz:
        members = {name: npz.read(name) for name in npz.namelist()}
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (1_000_000_000, 64)})
    members["support_vectors.npy"] = header.getvalue() + bytes(1024)  # the header includes the magic
    with zipfile.ZipFile(folder / ARRAYS_FILE, "w") as npz:
        for name, data in members.items():
            npz.writestr(name, data)
    edit_meta(folder, lambda doc: doc["arrays"]["support_vectors"].__setitem__("shape", [1_000_000_000, 64]))
    growth_kib, message = _load_in_fresh_process(folder)
    assert message.startswith("ModelFormatError"), message
    assert "support_vectors" in message and "512000000000 bytes" in message and "holds 1024" in message
    assert growth_kib < 200 * 1024, growth_kib


def _load_in_fresh_process(folder: Path) -> tuple[int, str]:
    """Peak RSS growth (KiB) of ``load_head(folder)`` in a fresh process, and its error."""
    script = textwrap.dedent(f"""
        import resource
        import torch
        from regressors.persistence import load_head
        import regressors.sequence, regressors.svr  # registered, and their imports paid for
        torch.set_num_threads(1)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            load_head({str(folder)!r})
            message = "loaded"
        except Exception as error:
            message = f"{{type(error).__name__}}: {{error}}"
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
        print(message)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    growth, message = done.stdout.split("\n", 1)
    return int(growth), message.strip()


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the overflow is the point
def test_vqa_predict_fails_rather_than_writing_non_finite_scores(saved, tmp_path, capsys):
    """A head whose numbers are finite but whose scores overflow (intercept 1e308, y_scale
    1e10): ``vqa predict`` exits 2 naming the videos, and writes no scores file."""
    from feature_store import FeatureStore
    from flows.cli import main as vqa
    from flows.fit import feature_set_identity

    root, X = saved
    store = FeatureStore(tmp_path / "store")
    set_id = store.ensure_feature_set(spec={"name": "probe", "dims": D}, sampling={"strategy": "uniform", "value": 2})
    for i, x in enumerate(X[:4]):
        store.write_video(set_id, f"v{i}", x, provenance={"set": {}, "video": {"source": f"v{i}.mp4"}})
    folder = copy_of(saved, "svr", tmp_path)
    edit_meta(
        folder,
        lambda doc: (
            doc["state"].update(intercept=1e308, y_scale=1e10),
            doc.__setitem__("feature_info", {"feature_sets": [feature_set_identity(store, set_id)]}),
        ),
    )
    manifest = tmp_path / "m.csv"
    manifest.write_text("video_id,path\n" + "".join(f"v{i},v{i}.mp4\n" for i in range(4)))
    code = vqa(
        [
            "predict",
            "--model",
            str(folder),
            "--store",
            str(store.path),
            "--manifest",
            str(manifest),
            "--out",
            str(tmp_path / "scores.csv"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "non-finite" in err and "'v0'" in err
    assert not (tmp_path / "scores.csv").exists()
