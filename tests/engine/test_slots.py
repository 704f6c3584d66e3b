"""LIM_SLOTS=auto (issue 29): how many runs one machine trains at once, decided from the runs'
memory estimates and the device's memory; a run out of memory beside others trains again alone."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST

from engine.errors import SettingsError
from engine.settings import load_config, parse_slots
from engine.training import slots as slots_lib
from engine.training.slots import SlotFacts, claim_run, may_start_another
from engine.training.worker import execute_run

GPU = 80 * 1024.0  # MiB of an 80 GB card


def test_slots_setting_is_auto_by_default_or_a_number():
    assert load_config({}).slots == "auto" and parse_slots("auto") is None
    assert parse_slots("3") == 3
    for bad in ("0", "65", "two", "-1", "1.5"):
        with pytest.raises(SettingsError, match="slots must be auto or a whole number"):
            parse_slots(bad)
    with pytest.raises(SettingsError, match="LIM_SLOTS"):
        load_config({"LIM_SLOTS": "many"})


@pytest.mark.parametrize(("slots", "facts", "fits"), [
    (None, SlotFacts("cuda", (), None), True),  # nothing running: always (even unknown size)
    (None, SlotFacts("cpu", (2000.0,), 2000.0, None, None), False),  # the CPU: one at a time
    (None, SlotFacts("cuda", (2000.0,), 2000.0, 70_000.0, GPU), True),
    (None, SlotFacts("cuda", (2000.0,) * 30, 2000.0, 20_000.0, GPU), True),  # 31 x 2.3 GiB + reserve < 80 GiB
    (None, SlotFacts("cuda", (2000.0,) * 36, 2000.0, 20_000.0, GPU), False),  # 37 at their peaks do not
    (None, SlotFacts("cuda", (2000.0,), 2000.0, 1500.0, GPU), False),  # not free now
    (None, SlotFacts("cuda", (2000.0,), None, 70_000.0, GPU), False),  # no estimate: alone
    (None, SlotFacts("cuda", (None,), 2000.0, 70_000.0, GPU), False),
    (2, SlotFacts("cpu", (1.0,), 1.0), True),  # a number is a number
    (2, SlotFacts("cuda", (1.0, 1.0), 1.0, 70_000.0, GPU), False),
])
def test_a_run_starts_beside_others_only_where_every_estimate_fits(slots, facts, fits):
    decided, why = may_start_another(slots, facts)
    assert decided is fits and why


def test_a_queued_run_carries_its_memory_estimate(workbench):
    run_id = workbench.submit_run("demo-text", "tiny-bert", "lora", {}, FAST)
    plan = workbench.check_run("demo-text", "tiny-bert", "lora", {}, FAST)
    stored = workbench.storage.get_run(run_id, owner_id=None)["estimate_mb"]
    assert stored is not None and stored == pytest.approx(plan["memory"]["estimate_mb"], rel=0.05)


def fake_gpu(monkeypatch, free_mb: float, total_mb: float = GPU) -> None:
    """The decision's view of a GPU (this machine has none): the device and its memory now."""
    monkeypatch.setattr(slots_lib, "run_device", lambda: "cuda")
    monkeypatch.setattr(slots_lib, "device_memory_mb", lambda device: (free_mb, total_mb))


def test_auto_claims_the_next_run_only_while_it_fits(workbench, monkeypatch):
    storage = workbench.storage
    ids = [workbench.submit_run("demo-text", "tiny-bert", "lora", {}, FAST) for _ in range(3)]
    for run_id in ids:
        storage.update_run(run_id, estimate_mb=10_000.0)
    assert claim_run(storage, "host-a:1:1")["id"] == ids[0]  # on the CPU: the first alone
    assert claim_run(storage, "host-a:1:2") is None
    fake_gpu(monkeypatch, free_mb=60_000.0, total_mb=24_000.0)  # two fit in 24 GiB, three do not
    assert claim_run(storage, "host-a:1:2")["id"] == ids[1]
    why: list[str] = []
    assert claim_run(storage, "host-a:1:3", why) is None
    assert why == [f"run {ids[2]} waits: 3 runs at their peaks need ~35,012 of 24,000 MiB"]
    fake_gpu(monkeypatch, free_mb=5_000.0)  # room in total, not free now
    assert claim_run(storage, "host-a:1:3", why) is None and why[-1].endswith("needs ~11,500 MiB, 5,000 MiB free")
    monkeypatch.setenv("LIM_SLOTS", "3")  # a number overrides the estimates
    assert claim_run(storage, "host-a:1:3")["id"] == ids[2]
    assert [r["status"] for r in workbench.list_runs()] == ["running"] * 3


def test_a_run_alone_starts_on_an_idle_host_and_nothing_starts_beside_it(workbench, monkeypatch):
    storage = workbench.storage
    monkeypatch.setenv("LIM_SLOTS", "4")
    first, alone, third = (workbench.submit_run("demo-text", "tiny-bert", "lora", {}, FAST) for _ in range(3))
    storage.update_run(alone, run_alone=1)
    assert claim_run(storage, "host-a:1:1")["id"] == first
    assert claim_run(storage, "host-a:1:2") is None  # the next run needs the host to itself
    storage.update_run(first, status="completed")
    assert claim_run(storage, "host-a:1:2")["id"] == alone
    assert storage.claim_next_run("host-a:1:3", slots=4) is None  # nothing beside it
    assert storage.claim_next_run("host-b:1:1", slots=4)["id"] == third  # another machine's own


def test_out_of_memory_beside_others_queues_the_run_again_to_train_alone(workbench, monkeypatch):
    """The run that does not fit after all is not failed: it goes back to the queue marked
    ``run_alone``, then trains to the end from its checkpoint with the host to itself."""
    from engine.training.recipe import FineTuneRecipe

    storage = workbench.storage
    monkeypatch.setenv("LIM_SLOTS", "2")
    settings = {**FAST, "max_steps": 6, "save_steps": 3}
    beside, run_id = (workbench.submit_run("demo-text", "tiny-bert", "lora", {}, settings) for _ in range(2))
    assert claim_run(storage, "host-a:1:1")["id"] == beside  # still training on this host
    original = FineTuneRecipe.optimizer_step

    def optimizer_step(self):  # the allocation that does not fit beside the other run
        if self.step >= 4 and not self.run.get("run_alone"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self)

    monkeypatch.setattr(FineTuneRecipe, "optimizer_step", optimizer_step)
    run = claim_run(storage, "host-a:1:2")
    assert execute_run(storage, run) == "queued"
    again = storage.get_run(run_id, owner_id=None)
    assert again["status"] == "queued" and again["run_alone"] == 1 and again["checkpoint_dir"]
    assert "queued again to train alone" in storage.events(run_id)[-1]["message"]
    assert claim_run(storage, "host-a:1:2") is None  # not while the other one trains
    storage.update_run(beside, status="completed")
    resumed = claim_run(storage, "host-a:1:2")
    assert resumed["id"] == run_id and execute_run(storage, resumed) == "completed"
    done = storage.get_run(run_id, owner_id=None)
    assert done["step"] == 6 and done["error"] is None



def test_an_ended_run_leaves_nothing_of_itself_in_the_worker_process(workbench, monkeypatch):
    """A worker between runs holds none of the last run's objects (on a GPU: its memory and its
    CUDA graphs' pools). On the research study's H100, idle worker processes held 4-11 GiB each:
    the ended recipe was still referenced when the worker emptied the CUDA cache."""
    import weakref

    from engine.training.recipe import FineTuneRecipe

    made = []
    original = FineTuneRecipe.setup

    def setup(self):
        made.append(weakref.ref(self))
        return original(self)

    monkeypatch.setattr(FineTuneRecipe, "setup", setup)
    workbench.submit_run("demo-text", "tiny-bert", "lora", {}, FAST)
    run = claim_run(workbench.storage, "host-a:1:1")
    assert execute_run(workbench.storage, run) == "completed"
    assert made and made[0]() is None  # collected by the worker itself, before it returned


def fake_gpus(monkeypatch, free_mb: dict[str, float], total_mb: float = GPU) -> None:
    """A host with several GPUs (this machine has none): each one's memory free now."""
    monkeypatch.setattr(slots_lib, "run_device", lambda: "cuda")
    monkeypatch.setattr(slots_lib, "host_devices", lambda: list(free_mb))
    monkeypatch.setattr(slots_lib, "device_memory_mb", lambda device: (free_mb[device], total_mb))


def test_several_gpus_get_one_run_each_first_then_more_where_they_fit(workbench, monkeypatch):
    storage = workbench.storage
    ids = [workbench.submit_run("demo-text", "tiny-bert", "lora", {}, FAST) for _ in range(6)]
    for run_id in ids:
        storage.update_run(run_id, estimate_mb=10_000.0)
    free = {"cuda:0": 70_000.0, "cuda:1": 75_000.0}
    fake_gpus(monkeypatch, free, total_mb=24_000.0)  # two runs fit on each card, not three
    placed = [slots_lib.claimed_device(claim_run(storage, f"host-a:1:{n}")) for n in range(4)]
    assert placed == ["cuda:1", "cuda:0", "cuda:1", "cuda:0"]  # one per GPU first, most free first
    assert storage.get_run(ids[0], owner_id=None)["worker"] == "host-a:1:0@cuda:1"
    assert claim_run(storage, "host-a:1:9") is None  # both cards are full at their peaks
    storage.update_run(ids[1], status="completed")  # cuda:0 has room again
    assert slots_lib.claimed_device(claim_run(storage, "host-a:1:9")) == "cuda:0"
    monkeypatch.setenv("LIM_SLOTS", "3")  # a number counts per GPU
    assert [slots_lib.claimed_device(claim_run(storage, "host-a:1:10"))] == ["cuda:1"]
    assert [r["status"] for r in workbench.list_runs()].count("running") == 5


def test_a_run_alone_waits_for_its_gpu_not_the_whole_host(workbench, monkeypatch):
    storage = workbench.storage
    monkeypatch.setenv("LIM_SLOTS", "2")
    fake_gpus(monkeypatch, {"cuda:0": 70_000.0, "cuda:1": 60_000.0})
    first, alone, third, fourth = (workbench.submit_run("demo-text", "tiny-bert", "lora", {}, FAST)
                                   for _ in range(4))
    storage.update_run(alone, run_alone=1)
    assert slots_lib.claimed_device(claim_run(storage, "host-a:1:1")) == "cuda:0"
    assert slots_lib.claimed_device(claim_run(storage, "host-a:1:2")) == "cuda:1"  # the idle GPU
    assert slots_lib.claimed_device(claim_run(storage, "host-a:1:3")) == "cuda:0"
    # cuda:0 is full; cuda:1 has a free slot, but nothing starts beside the run alone
    assert claim_run(storage, "host-a:1:4") is None
    storage.update_run(alone, status="completed")
    assert slots_lib.claimed_device(claim_run(storage, "host-a:1:4")) == "cuda:1"
    assert [storage.get_run(i, owner_id=None)["status"] for i in (third, fourth)] == ["running"] * 2


def test_a_claimed_run_trains_on_the_gpu_its_claim_names(monkeypatch):
    assert slots_lib.claimed_device({"worker": "host:1:2@cuda:3"}) == "cuda:3"
    monkeypatch.setattr(slots_lib, "run_device", lambda: "cpu")
    assert slots_lib.claimed_device({"worker": "host:1:2"}) == "cpu"
    assert slots_lib.claimed_device({"worker": None}) == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(slots_lib, "run_device", lambda: "cuda")
    assert slots_lib.host_devices() == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    monkeypatch.setattr(slots_lib, "run_device", lambda: "cuda:2")  # LIM_DEVICE names one
    assert slots_lib.host_devices() == ["cuda:2"]
