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
