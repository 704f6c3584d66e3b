"""Models loaded in several threads at once (the app's worker slots, a Playground beside a run):
transformers' loader swaps torch.nn.init for no-ops process-wide while it loads, so unserialised
loads leave torch's initialisers as no-ops for good (found as garbage transcripts and meta
parameters in later tests of the same process). engine/models/base.py: MODEL_BUILD_LOCK."""

from __future__ import annotations

import threading

import torch

from engine.models import task_model_for
from engine.models.base import intact_initialisers


def load_in_threads(load, threads: int = 4, rounds: int = 4) -> list[BaseException]:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(rounds):
                load()
        except BaseException as error:  # noqa: BLE001 (reported by the test)
            errors.append(error)

    started = [threading.Thread(target=work) for _ in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    return errors


def test_loads_in_several_threads_leave_torchs_initialisers_intact(workbench):
    record = workbench.get_model("tiny-whisper")
    model_dir = workbench.storage.files.resolve(record["path"])
    task_model = task_model_for("whisper", "asr", model_dir)
    assert intact_initialisers()
    assert load_in_threads(lambda: (task_model.load(), task_model.build_from_config())) == []
    assert intact_initialisers()
    # and a model built now is initialised: not all zeros, not uninitialised memory
    weight = torch.nn.Linear(64, 64).weight
    assert weight.abs().max() <= 64 ** -0.5 + 1e-6 and weight.std() > 0.01


def test_unserialised_loads_are_what_broke_them(workbench, monkeypatch):
    """The same loads without the lock do leave the no-ops behind (so the test above can fail)."""
    import sys

    from transformers import PreTrainedModel
    from transformers.initialization import TORCH_MODULES_TO_PATCH

    # Everything a racing loader patches, to put back after: torch's initialisers in every module
    # transformers patches, torch's creation functions, and PreTrainedModel's init_weights and
    # tie_weights (left a no-op, a later load keeps its tied output layer on the meta device).
    modules = [sys.modules[name] for name in (*TORCH_MODULES_TO_PATCH, "torch") if name in sys.modules]
    originals = {module: dict(vars(module)) for module in modules}
    methods = {name: PreTrainedModel.__dict__[name] for name in ("init_weights", "tie_weights")}
    record = workbench.get_model("tiny-whisper")
    task_model = task_model_for("whisper", "asr", workbench.storage.files.resolve(record["path"]))
    unlocked = type(task_model).load.__wrapped__
    try:
        for _ in range(5):  # a race: a few tries make it near certain
            load_in_threads(lambda: unlocked(task_model), threads=6, rounds=3)
            if not intact_initialisers():
                break
        assert not intact_initialisers()
    finally:
        for module, names in originals.items():
            for name, value in names.items():
                if vars(module).get(name) is not value:
                    setattr(module, name, value)
        for name, method in methods.items():
            setattr(PreTrainedModel, name, method)
    assert intact_initialisers()
    # nothing of the race outlives this test: a load now ties and fills every parameter (a
    # missed tie_weights once left later tests' proj_out on the meta device)
    assert not [name for name, p in task_model.load().named_parameters() if p.is_meta]
