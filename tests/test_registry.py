"""vqa_core.registry: lookups with did-you-mean hints, wildcard listing, duplicate refusal, lazy
modules, and the registries of the packages built on it."""

from __future__ import annotations

import sys
import textwrap
import threading
from dataclasses import dataclass

import pytest

from vqa_core.errors import CoreError, DuplicateRegistrationError
from vqa_core.registry import Registry


class UnknownThingError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def things() -> Registry:
    registry = Registry("thing", error=UnknownThingError)
    for name in ("resnet50", "resnet34", "unique", "slowfast-tokens"):
        registry.register(name, f"builder of {name}")
    return registry


def test_lookup_listing_and_mapping_protocol():
    registry = things()
    assert registry.get("unique") == "builder of unique" == registry["unique"]
    assert registry.names() == ["resnet34", "resnet50", "slowfast-tokens", "unique"]  # sorted
    assert list(registry) == registry.names() and len(registry) == 4
    assert "resnet50" in registry and "resnet18" not in registry and ["unhashable"] not in registry
    assert registry.items()[0] == ("resnet34", "builder of resnet34")
    assert repr(registry) == "Registry('thing', 4 entries)"


def test_wildcard_names():
    registry = things()
    assert registry.names("resnet*") == ["resnet34", "resnet50"]
    assert registry.names("*-tokens") == ["slowfast-tokens"]
    assert registry.names("resnet?4") == ["resnet34"]
    assert registry.names("vgg*") == []


def test_unknown_name_raises_the_owners_error_with_close_matches():
    registry = things()
    with pytest.raises(UnknownThingError) as info:
        registry.get("resnet5")
    message = str(info.value)
    assert message.startswith("unknown thing 'resnet5'. Did you mean resnet50")
    assert message.endswith("Known: resnet34, resnet50, slowfast-tokens, unique")
    with pytest.raises(UnknownThingError, match="unknown thing 'zzz'. Known: "):  # nothing close: no hint
        registry.get("zzz")
    with pytest.raises(UnknownThingError, match=r"^model\.json: unknown thing 'uniq'\. Did you mean unique\?"):
        registry.get("uniq", where="model.json")
    with pytest.raises(UnknownThingError, match="unknown thing"):  # unhashable names are unknown, not a TypeError
        registry.get(["resnet50"])
    with pytest.raises(UnknownThingError):
        registry["resnet5"]


def test_default_error_is_key_error():
    with pytest.raises(KeyError, match="unknown loss 'x'"):
        Registry("loss").get("x")


def test_duplicate_registration_is_refused_but_re_registering_the_same_entry_is_not():
    registry = Registry("thing")

    @registry.register("a")
    def build_a():
        return 1

    assert registry.register("a", build_a) is build_a  # the very object again (a module imported twice)

    def other():
        return 2

    with pytest.raises(DuplicateRegistrationError, match="thing 'a' is registered twice") as info:
        registry.register("a", other)
    assert isinstance(info.value, ValueError) and isinstance(info.value, CoreError)
    with pytest.raises(DuplicateRegistrationError):
        registry.register("a")(other)  # the decorator form too
    assert registry.get("a") is build_a

    @dataclass(frozen=True)
    class Spec:
        url: str

    registry.register("spec", Spec("u"))
    registry.register("spec", Spec("u"))  # an equal value built twice: accepted
    with pytest.raises(DuplicateRegistrationError):
        registry.register("spec", Spec("v"))


def test_registration_order_when_not_sorted():
    registry = Registry("dataset", sort=False)
    for name in ("konvid1k", "livevqc", "lsvq", "folder", "tid2013"):
        registry.register(name, name.upper())
    assert registry.names() == ["konvid1k", "livevqc", "lsvq", "folder", "tid2013"]
    assert [name for name, _ in registry.items()] == registry.names()
    assert registry.names("l*") == ["livevqc", "lsvq"]
    assert registry.unknown_message("konvid").endswith("Known: konvid1k, livevqc, lsvq, folder, tid2013")


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    """A package ``lazy_plugins_<n>`` whose modules register into the registry on import."""
    name = f"lazy_plugins_{len(sys.modules)}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("plugin", lazy_modules=(f"{name}.first", f"{name}.second"))
    monkeypatch.setattr(sys.modules[__name__], "LAZY", registry, raising=False)
    for module, entries in (("first", ("alpha", "beta")), ("second", ("gamma",))):
        lines = [f"from {__name__} import LAZY", "IMPORTS = globals().get('IMPORTS', 0) + 1"]
        lines += [f"LAZY.register({entry!r}, {entry!r}.upper())" for entry in entries]
        (package / f"{module}.py").write_text("\n".join(lines) + "\n")
    yield name, registry
    for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
        del sys.modules[module]


def test_lazy_modules_are_imported_once_on_the_first_lookup(plugin_package):
    name, registry = plugin_package
    assert f"{name}.first" not in sys.modules  # nothing imported at construction
    assert registry.get("gamma") == "GAMMA"
    assert registry.names() == ["alpha", "beta", "gamma"] and len(registry) == 3
    assert sys.modules[f"{name}.first"].IMPORTS == 1
    with pytest.raises(KeyError, match="Did you mean alpha"):
        registry.get("alpha2")


def test_a_failing_lazy_module_fails_every_lookup_until_fixed(plugin_package, tmp_path):
    name, registry = plugin_package
    broken = tmp_path / name / "second.py"
    good = broken.read_text()
    broken.write_text("raise ImportError('optional dependency missing')\n")
    for _ in range(2):  # raised again, never hidden behind a misleading "unknown plugin"
        with pytest.raises(ImportError, match="optional dependency missing"):
            registry.get("alpha")
    broken.write_text(good)
    sys.modules.pop(f"{name}.second", None)
    assert registry.get("gamma") == "GAMMA" and registry.names() == ["alpha", "beta", "gamma"]


def test_lookups_from_other_threads_wait_for_the_lazy_modules(tmp_path, monkeypatch):
    """A second thread must not see a half-filled registry while the first imports."""
    name = f"slow_plugins_{len(sys.modules)}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(f"""
        import time
        from {__name__} import SLOW, STARTED
        STARTED.set()
        time.sleep(0.3)
        SLOW.register("late", "LATE")
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("plugin", lazy_modules=(name,))
    started = threading.Event()
    monkeypatch.setattr(sys.modules[__name__], "SLOW", registry, raising=False)
    monkeypatch.setattr(sys.modules[__name__], "STARTED", started, raising=False)
    results = []
    first = threading.Thread(target=lambda: results.append(("first", registry.names())))
    first.start()
    assert started.wait(5)
    results.append(("second", registry.names()))  # while the first thread is still importing
    first.join(5)
    assert sorted(results) == [("first", ["late"]), ("second", ["late"])]
    sys.modules.pop(name, None)


# --------------------------------------------------------------------------- the project's registries


def test_project_registries_share_the_helper_and_its_hints():
    from pipeline.datasets import DATASETS
    from pipeline.errors import FinetuneError, UnknownDatasetError, WeightsUnavailableError
    from pipeline.finetune import RECIPES, get_recipe, list_recipes
    from pipeline.weights import CHECKPOINTS
    from regressors.errors import InvalidInputError, ModelFormatError
    from regressors.losses import LOSSES, get_loss, list_losses
    from regressors.modules import HEAD_MODULES, build_module, list_modules
    from regressors.persistence import HEAD_TYPES, list_heads
    from regressors.temporal_pooling import POOLINGS, pool_features

    for registry in (DATASETS, RECIPES, CHECKPOINTS, LOSSES, HEAD_MODULES, HEAD_TYPES, POOLINGS):
        assert isinstance(registry, Registry)
    assert list_losses() == LOSSES.names() and "plcc_rank" in list_losses()
    assert {"vsfa", "a2inet", "dualpath"} <= set(list_modules())  # lazy modules imported on first use
    assert {"svr", "sequence"} <= set(list_heads())
    assert list_recipes() == sorted(list_recipes()) and "fmc-inception" in list_recipes()
    cases = [
        (lambda: get_loss("plc"), InvalidInputError, "unknown loss 'plc'. Did you mean plcc"),
        (lambda: build_module("vsfaa", 4), InvalidInputError, "unknown head module 'vsfaa'. Did you mean vsfa"),
        (lambda: HEAD_TYPES.get("svm", where="head.json"), ModelFormatError, "head.json: unknown head type 'svm'"),
        (lambda: get_recipe("fmc-inceptoin"), FinetuneError, "Did you mean fmc-inception"),
        (lambda: DATASETS.get("kadid"), UnknownDatasetError, "Did you mean kadid10k"),
        (lambda: pool_features([[1.0]], "maen"), InvalidInputError, "unknown pooling method 'maen'. Did you mean mean"),
        (lambda: CHECKPOINTS.get("nope.pth"), WeightsUnavailableError, "unknown checkpoint 'nope.pth'"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
