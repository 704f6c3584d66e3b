"""A third-party method found through its entry point, as pip would install it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

from conftest import FAST

from engine.methods import ENTRY_POINT_GROUP, registry

PLUGIN = '''
from dataclasses import dataclass, field

from engine.methods import Method


@dataclass
class HeadOnlySettings:
    unfreeze_layer_norms: bool = field(default=False, metadata={"help": "Also train layer norms."})


def apply(model, settings, context):
    for name, parameter in model.named_parameters():
        head = any(part in name for part in context.head_modules)
        parameter.requires_grad_(head or (settings.unfreeze_layer_norms and "layer_norm" in name))
    return model


METHOD = Method(name="head-only", help="Train only the task head.", settings_cls=HeadOnlySettings,
                apply=apply, is_adapter=False, source="my-method")
'''


def install_fake_distribution(site, monkeypatch, module: str, code: str, entry: str):
    """What `pip install` leaves in site-packages: the module and its dist-info."""
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(code)
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    name = module.replace("_", "-")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry} = {module}:METHOD\n")
    monkeypatch.syspath_prepend(str(site))


def test_entry_point_plugin_is_listed_and_trains(workbench, tmp_path, monkeypatch):
    install_fake_distribution(tmp_path / "site", monkeypatch, "my_method", PLUGIN, "head-only")
    [entry] = [e for e in entry_points(group=ENTRY_POINT_GROUP) if e.name == "head-only"]
    try:
        registry.load_plugin(entry)
        listed = {m["name"]: m for m in workbench.list_methods()}
        assert listed["head-only"]["source"] == "my-method"
        assert listed["head-only"]["settings"][0]["name"] == "unfreeze_layer_norms"
        run_id = workbench.submit_run("demo-commands", "tiny-whisper", "head-only",
                                      {"unfreeze_layer_norms": True}, FAST)
        summary = workbench.wait_for_run(run_id)
        assert summary["status"] == "completed", summary["error"]
        assert 0 < summary["trainable_params"] < summary["total_params"] / 2
    finally:
        registry.unregister_method("head-only")
        sys.modules.pop("my_method", None)


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lim-head-only"


def test_the_documented_example_plugin_installs_with_pip_and_trains(workbench, tmp_path, monkeypatch):
    target, source = tmp_path / "site", tmp_path / "lim-head-only"
    shutil.copytree(EXAMPLE, source)  # setuptools builds in the source folder: keep the repo clean
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", "--target", str(target), str(source)],
                   check=True, capture_output=True, timeout=300)
    monkeypatch.syspath_prepend(str(target))
    [entry] = [e for e in entry_points(group=ENTRY_POINT_GROUP) if e.name == "head-only"]
    try:
        registry.load_plugin(entry)
        method = {m["name"]: m for m in workbench.list_methods()}["head-only"]
        assert method["source"] == "lim-head-only" and method["idea"]
        run_id = workbench.submit_run("demo-text", "tiny-bert", "head-only",
                                      {"unfreeze_layer_norms": True}, FAST)
        summary = workbench.wait_for_run(run_id)
        assert summary["status"] == "completed", summary["error"]
        assert 0 < summary["trainable_params"] < summary["total_params"] / 10
    finally:
        registry.unregister_method("head-only")
        sys.modules.pop("lim_head_only", None)


def test_a_plugin_that_raises_fails_its_run_with_its_name(workbench, tmp_path, monkeypatch):
    def broken(model, settings, context):
        raise ValueError("tensor shapes disagree")

    from engine.methods import register_method
    from engine.methods.full import FullSettings

    register_method(name="shaky", help="raises", settings_cls=FullSettings, apply=broken,
                    source="shaky-plugin")
    try:
        run_id = workbench.submit_run("demo-text", "tiny-bert", "shaky", {}, FAST)
        summary = workbench.wait_for_run(run_id)
        good = workbench.wait_for_run(workbench.submit_run("demo-text", "tiny-bert", "lora", {}, FAST))
    finally:
        registry.unregister_method("shaky")
    assert summary["status"] == "failed" and "shaky" in summary["error"]
    assert "tensor shapes disagree" in summary["error"]
    assert good["status"] == "completed"


def test_a_broken_plugin_is_skipped(tmp_path, monkeypatch, caplog):
    install_fake_distribution(tmp_path / "site", monkeypatch, "broken_method",
                              "raise ImportError('needs a missing library')\n", "broken")
    [entry] = [e for e in entry_points(group=ENTRY_POINT_GROUP) if e.name == "broken"]
    registry.load_plugin(entry)
    assert "broken" not in {m.name for m in registry.all_methods()}
    assert "needs a missing library" in caplog.text


# ---------------------------------------------------------------------- one registration path
CLASH = PLUGIN.replace('name="head-only"', 'name="lora"').replace('source="my-method"', 'source="lora-remix"')


def test_a_plugin_named_like_a_built_in_is_reported_not_dropped_silently(workbench, tmp_path,
                                                                         monkeypatch, caplog):
    monkeypatch.setattr(registry, "_problems", [])
    install_fake_distribution(tmp_path / "site", monkeypatch, "lora_remix", CLASH, "lora")
    [entry] = [e for e in entry_points(group=ENTRY_POINT_GROUP)
               if e.name == "lora" and e.dist.name == "lora-remix"]
    try:
        assert registry.load_plugin(entry) is None
    finally:
        sys.modules.pop("lora_remix", None)
    [problem] = registry.plugin_problems()
    assert "lora-remix" in problem and "'lora' is taken" in problem and "built-in" in problem
    assert problem in caplog.text  # logged as a warning too
    assert {r.levelname for r in caplog.records if problem in r.getMessage()} == {"WARNING"}
    assert registry.get_method("lora").source == "built-in"  # the built-in keeps its name
    assert workbench.method_problems() == [problem]  # the Methods page shows it


def test_plugins_pass_the_same_checks_as_built_ins(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_problems", [])
    bad_name = PLUGIN.replace('name="head-only"', 'name="Head Only"')
    install_fake_distribution(tmp_path / "site", monkeypatch, "bad_name", bad_name, "bad-name")
    no_default = PLUGIN.replace("unfreeze_layer_norms: bool = field(default=False, ",
                                "unfreeze_layer_norms: bool = field(")
    install_fake_distribution(tmp_path / "site", monkeypatch, "no_default", no_default, "no-default")
    try:
        for name in ("bad-name", "no-default"):
            [entry] = [e for e in entry_points(group=ENTRY_POINT_GROUP) if e.name == name]
            assert registry.load_plugin(entry) is None
    finally:
        sys.modules.pop("bad_name", None)
        sys.modules.pop("no_default", None)
    first, second = registry.plugin_problems()
    assert "must be lowercase letters" in first and "bad-name" in first
    assert "every setting needs a default" in second and "unfreeze_layer_norms" in second
    assert "Head Only" not in {m.name for m in registry.all_methods()}


def test_a_plugin_that_leaves_its_source_unset_is_named_by_its_package(tmp_path, monkeypatch):
    unnamed = PLUGIN.replace(', source="my-method"', "")
    install_fake_distribution(tmp_path / "site", monkeypatch, "unnamed_method", unnamed, "head-only")
    [entry] = [e for e in entry_points(group=ENTRY_POINT_GROUP) if e.name == "head-only"]
    try:
        assert registry.load_plugin(entry).source == "unnamed-method"  # not "built-in"
    finally:
        registry.unregister_method("head-only")
        sys.modules.pop("unnamed_method", None)


def test_built_in_methods_come_through_the_same_entry_points():
    """pyproject.toml declares the built-ins in the plugins' group; the registry holds the very
    objects those entry points name (nothing registers itself on import)."""
    ours = {e.name: e for e in entry_points(group=ENTRY_POINT_GROUP)
            if e.dist is not None and e.dist.name == registry.DISTRIBUTION}
    declared = {e.name: e.value for e in registry.builtin_entry_points_from_pyproject()}
    assert set(declared) == {"full", "frozen-encoder", "lora", "qlora", "qlora-8bit", "adalora", "ia3",
                             "ta-qlora", "cmra", "qass", "mma", "qdora", "qlora-all-linear"}
    for name in declared:  # also those an older editable install lacks (read from pyproject.toml)
        assert registry.get_method(name).source == "built-in"
    for name, entry in ours.items():
        assert registry.get_method(name) is entry.load()
    # install is current (after a new built-in: pip install -e . / make venv)
    assert declared == {name: entry.value for name, entry in ours.items()}
