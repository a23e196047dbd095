"""SlowFastR50 against pytorchvideo's slowfast_r50: key layout, checkpoint loading, parity.

Golden values come from pytorchvideo itself (see ``fixtures/make_slowfast_fixture.py`` for
how to regenerate them); the weights are rebuilt here from the key list with the fixture
script's deterministic generator, so pytorchvideo is not needed to run these tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import WeightsError, WeightsUnavailableError
from pipeline.extractors.slowfast_model import SlowFastR50, load_slowfast_checkpoint, pack_pathways

from .helpers import load_fixture_script

FIXTURES = Path(__file__).parent / "fixtures"
NUM_PARAMETERS = 34_566_488
# Same ops in the same order as pytorchvideo: with the same torch, CPU and thread count the
# outputs are bit-identical (measured). Another thread count or CPU changes the conv
# reduction order; the float32 rounding then accumulates over ~50 layers to an absolute
# error proportional to the activations' scale, not to each value (measured 1 vs 2 threads:
# max abs 3.8e-5 on maps whose max is ~25, i.e. 1.5e-6 of scale; small post-ReLU values thus
# see large relative errors). Hence atol = ATOL_OF_SCALE * max|golden|, ~6x that margin.
RTOL, ATOL_OF_SCALE = 1e-4, 1e-5


fixture_lib = load_fixture_script("make_slowfast_fixture")


@pytest.fixture(scope="module")
def key_table() -> dict:
    return json.loads((FIXTURES / "slowfast_keys.json").read_text())


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "slowfast_parity.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def synthetic_state(key_table) -> dict[str, torch.Tensor]:
    return fixture_lib.synthetic_state_dict([(k, tuple(shape)) for k, shape, _ in key_table["keys"]])


@pytest.fixture(scope="module")
def model(synthetic_state) -> SlowFastR50:
    net = SlowFastR50().eval()
    net.load_state_dict(synthetic_state, strict=True)
    return net


def _clip(golden, prefix: str) -> torch.Tensor:
    clip = fixture_lib.make_clip(int(golden[f"{prefix}_clip_seed"]), tuple(golden[f"{prefix}_clip_shape"]))
    # A drifted torch RNG would make every parity failure below misleading: say so first.
    np.testing.assert_allclose(
        fixture_lib.clip_checksum(clip),
        golden[f"{prefix}_clip_checksum"],
        rtol=1e-9,
        err_msg="torch.randn no longer reproduces the fixture's input clip; regenerate the fixture",
    )
    return clip


def _atol(reference: np.ndarray) -> float:
    return ATOL_OF_SCALE * float(np.abs(reference).max())


def _check_maps(golden, prefix: str, slow_map: torch.Tensor, fast_map: torch.Tensor) -> None:
    for name, fmap in (("slow", slow_map), ("fast", fast_map)):
        assert tuple(fmap.shape) == tuple(golden[f"{prefix}_{name}_shape"])
        ours = {
            "mean": fmap.mean(dim=(2, 3, 4)).numpy(),
            "sample": fmap.flatten()[torch.from_numpy(golden[f"{prefix}_{name}_index"])].numpy(),
        }
        for what, value in ours.items():
            ref = golden[f"{prefix}_{name}_{what}"]
            np.testing.assert_allclose(value, ref, rtol=RTOL, atol=_atol(ref), err_msg=f"{prefix} {name} {what}")


def test_keys_shapes_dtypes_match_pytorchvideo(key_table):
    ours = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in SlowFastR50().state_dict().items()]
    assert len(ours) == 662
    assert ours == key_table["keys"]  # same order too, as pytorchvideo's state_dict() lists them


def test_parameter_count(key_table):
    assert sum(p.numel() for p in SlowFastR50().parameters()) == NUM_PARAMETERS == key_table["num_parameters"]


def test_head_parameters_present():
    model = SlowFastR50()
    assert tuple(model.blocks[6].proj.weight.shape) == (400, 2304)
    assert isinstance(model.blocks[4].multipathway_fusion, torch.nn.Identity)


def test_synthetic_weights_are_keyed_by_name():
    # The generator depends on the key, not on call order: the test's rebuild is order-free.
    a = fixture_lib.synthetic_tensor("blocks.6.proj.weight", (400, 2304))
    fixture_lib.synthetic_tensor("blocks.0.multipathway_blocks.0.conv.weight", (64, 3, 1, 7, 7))
    assert torch.equal(a, fixture_lib.synthetic_tensor("blocks.6.proj.weight", (400, 2304)))


def test_stage5_parity_small_clip(model, golden):
    slow, fast = pack_pathways(_clip(golden, "small"))
    with torch.no_grad():
        slow_map, fast_map = model(slow, fast)
    assert slow_map.shape == (2, 2048, 8, 2, 2) and fast_map.shape == (2, 256, 32, 2, 2)
    _check_maps(golden, "small", slow_map, fast_map)


@pytest.mark.slow
def test_224_clip_shapes_maps_and_logits(model, golden):
    """The one full-size forward (~5 s on CPU): stage-5 shapes, maps and classify() logits."""
    captured = {}
    hook = model.blocks[4].register_forward_hook(lambda mod, args, out: captured.update(maps=out))
    try:
        slow, fast = pack_pathways(_clip(golden, "large"))
        with torch.no_grad():
            logits = model.classify(slow, fast)
    finally:
        hook.remove()
    slow_map, fast_map = captured["maps"]
    assert slow_map.shape[1:] == (2048, 8, 7, 7)
    assert fast_map.shape[1:] == (256, 32, 7, 7)
    _check_maps(golden, "large", slow_map, fast_map)
    assert logits.shape == (1, 400)
    np.testing.assert_allclose(logits.numpy(), golden["large_logits"], rtol=RTOL, atol=_atol(golden["large_logits"]))
    # logits_from_maps is the head alone: same logits from the captured maps.
    with torch.no_grad():
        torch.testing.assert_close(model.logits_from_maps(slow_map, fast_map), logits)


def test_pack_pathways_picks_linspace_frames():
    clip = torch.arange(32, dtype=torch.float32).view(1, 1, 32, 1, 1).expand(2, 3, 32, 4, 4)
    slow, fast = pack_pathways(clip)
    assert slow.shape == (2, 3, 8, 4, 4)
    assert slow[0, 0, :, 0, 0].tolist() == [0, 4, 8, 13, 17, 22, 26, 31]
    assert fast is clip


@pytest.mark.parametrize("shape", [(3, 32, 8, 8), (1, 1, 32, 8, 8), (1, 3, 30, 8, 8)])
def test_pack_pathways_rejects_bad_clips(shape):
    with pytest.raises(ValueError):
        pack_pathways(torch.zeros(shape))


@pytest.mark.parametrize(
    "slow_shape, fast_shape",
    [((1, 3, 7, 32, 32), (1, 3, 32, 32, 32)), ((1, 3, 8, 64, 64), (1, 3, 32, 32, 32)), ((1, 3, 8, 32), (1, 3, 32, 32))],
)
def test_forward_rejects_unpaired_pathways(slow_shape, fast_shape):
    with pytest.raises(ValueError, match="slow"):
        SlowFastR50()(torch.zeros(slow_shape), torch.zeros(fast_shape))


@pytest.mark.slow
@pytest.mark.parametrize("wrap", [True, False], ids=["model_state", "bare"])
def test_load_checkpoint(tmp_path, synthetic_state, wrap):
    path = tmp_path / "SLOWFAST_8x8_R50.pyth"
    # PySlowFast's layout: extra entries beside the weights must not disturb loading.
    torch.save({"model_state": synthetic_state, "epoch": 196} if wrap else synthetic_state, path)
    model = SlowFastR50()
    info = load_slowfast_checkpoint(model, path)
    assert info["container"] == ("model_state" if wrap else "bare")
    assert info["num_tensors"] == 662 and len(info["sha256"]) == 64
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in synthetic_state.items())


def test_load_checkpoint_renamed_key_is_a_clear_error(tmp_path, synthetic_state):
    old = "blocks.6.proj.weight"
    state = {("blocks.6.projection.weight" if k == old else k): v for k, v in synthetic_state.items()}
    path = tmp_path / "renamed.pyth"
    torch.save({"model_state": state}, path)
    with pytest.raises(WeightsError) as excinfo:
        load_slowfast_checkpoint(SlowFastR50(), path)
    message = str(excinfo.value)
    assert old in message and "blocks.6.projection.weight" in message
    assert "missing" in message and "unexpected" in message


@pytest.mark.slow
def test_load_checkpoint_wrong_shape_is_a_clear_error(tmp_path, synthetic_state):
    state = dict(synthetic_state)
    state["blocks.6.proj.weight"] = torch.zeros(700, 2304)  # a 700-class head
    path = tmp_path / "k700.pyth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="blocks.6.proj.weight"):
        load_slowfast_checkpoint(SlowFastR50(), path)


def test_load_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "pickled.pyth"
    torch.save({"model_state": {}, "cfg": WeightsError("any non-tensor object")}, path)
    with pytest.raises(WeightsError):  # weights_only=True refuses it; never unpickled
        load_slowfast_checkpoint(SlowFastR50(), path)


@pytest.mark.slow
def test_load_checkpoint_missing_file(tmp_path):
    with pytest.raises(WeightsUnavailableError):
        load_slowfast_checkpoint(SlowFastR50(), tmp_path / "absent.pyth")
