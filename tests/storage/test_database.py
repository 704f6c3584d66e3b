"""Storage on a real SQLite file: round trips, owner scoping, atomic claims, concurrency."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest

from storage import Storage, safe_name
from storage.schema import LOCAL_USER_ID, migrations


@pytest.fixture
def storage(tmp_path):
    store = Storage(tmp_path / "home")
    yield store
    store.close()


def make_dataset(storage, name="ds", owner_id=LOCAL_USER_ID, shared=0):
    return storage.add_dataset(
        {"name": name, "task": "asr", "path": f"datasets/{name}", "version": "v1",
         "splits": ["train"], "labels": [], "owner_id": owner_id, "shared": shared},
        [{"split": "train", "position": i, "file": f"train/{i}.flac", "text": f"t{i}",
          "label": None, "duration_s": 1.0} for i in range(3)])


def add_user(storage, name):
    with storage.atomic() as db:
        return db["users"].insert({"name": name, "is_admin": 0}).last_pk


def test_schema_is_created_in_wal_mode_and_reopens(tmp_path):
    first = Storage(tmp_path / "home")
    assert first.db.execute("pragma journal_mode").fetchone()[0] == "wal"
    tables = set(first.db.table_names())
    assert {"users", "datasets", "dataset_items", "models", "runs", "run_metrics", "run_events"} <= tables
    first.close()
    second = Storage(tmp_path / "home")  # migrations already applied: nothing happens twice
    assert second.db["users"].count == 1
    applied = [m["name"] for m in second.db["_sqlite_migrations"].rows]
    assert applied[0] == "m001_initial" and len(applied) == len(set(applied))
    assert migrations.pending(second.db) == []


def test_queue_position_migration_keeps_the_order_of_an_older_database(tmp_path):
    from sqlite_utils import Database
    from sqlite_utils.migrations import Migrations

    path = tmp_path / "home"
    path.mkdir()
    old = Database(path / "workbench.db")
    only_first = Migrations("lessismore")
    only_first(name="m001_initial")(migrations._migrations[0].fn)
    only_first.apply(old)
    for _ in range(3):
        old["runs"].insert({"owner_id": 1, "status": "queued", "method": "lora"})
    old.close()
    upgraded = Storage(path)  # applies the newer migrations, m004 among them
    assert [r["id"] for r in upgraded.queued_runs()] == [1, 2, 3]
    assert upgraded.claim_next_run("h:1:1")["id"] == 1


def test_dataset_round_trip(storage):
    dataset_id = make_dataset(storage)
    found = storage.find_dataset("ds")
    assert found["id"] == dataset_id and found["splits"] == ["train"] and found["num_items"] == 3
    assert [i["text"] for i in storage.dataset_items(dataset_id, "train")] == ["t0", "t1", "t2"]
    assert [i["text"] for i in storage.dataset_items(dataset_id, "train", limit=1, offset=1)] == ["t1"]
    assert storage.count_items(dataset_id) == {"train": 3}
    storage.delete_dataset(dataset_id)
    assert storage.find_dataset("ds") is None
    assert storage.dataset_items(dataset_id) == []


def test_items_are_all_or_nothing(storage):
    with pytest.raises(sqlite3.IntegrityError):
        storage.add_dataset({"name": "bad", "task": "asr", "path": "x"},
                            [{"split": "train", "position": 0}, {"split": None, "position": 1}])
    assert storage.find_dataset("bad") is None
    assert storage.db["dataset_items"].count == 0


def test_items_are_scoped_to_their_owner(storage):
    other = add_user(storage, "alice")
    make_dataset(storage, "mine")
    make_dataset(storage, "hers", owner_id=other)
    make_dataset(storage, "public", owner_id=other, shared=1)
    assert [d["name"] for d in storage.list_datasets(LOCAL_USER_ID)] == ["mine", "public"]
    assert storage.find_dataset("hers", LOCAL_USER_ID) is None
    assert storage.find_dataset("hers", other)["name"] == "hers"
    with pytest.raises(PermissionError):
        storage.delete_dataset(storage.find_dataset("public")["id"], LOCAL_USER_ID)


def test_run_lifecycle_and_metrics(storage):
    run_id = storage.create_run({"method": "lora", "settings": {"method": {"r": 4}, "training": {}}})
    run = storage.get_run(run_id)
    assert run["status"] == "queued" and run["settings"]["method"] == {"r": 4}
    storage.add_metrics(run_id, 1, 0.5, {"train/loss": 2.0})
    storage.add_metrics(run_id, 2, 1.0, {"train/loss": 1.5})
    storage.add_metrics(run_id, 2, 1.1, {"train/loss": 1.4})  # a replayed step replaces its point
    assert [(m["step"], m["value"]) for m in storage.metrics(run_id)] == [(1, 2.0), (2, 1.4)]
    storage.delete_metrics_after(run_id, 1)
    assert [m["step"] for m in storage.metrics(run_id)] == [1]
    storage.add_event(run_id, "hello")
    assert [e["message"] for e in storage.events(run_id)] == ["hello"]
    assert storage.get_run(run_id, owner_id=add_user(storage, "bob")) is None


def test_claims_take_oldest_first_and_never_twice(storage):
    ids = [storage.create_run({"method": "lora", "settings": {}}) for _ in range(3)]
    storage.move_in_queue(ids[2], 1)  # the queue's order, not the ids', decides
    in_order = []
    while (run := storage.claim_next_run("one-worker")) is not None:
        in_order.append(run["id"])
    assert in_order == [ids[2], ids[0], ids[1]]  # not sorted: the order claims happened in

    ids = [storage.create_run({"method": "lora", "settings": {}}) for _ in range(6)]
    claimed, lock = [], threading.Lock()

    def claim(worker):
        while True:
            run = storage.claim_next_run(worker)
            if run is None:
                return
            with lock:
                claimed.append(run["id"])

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == len(set(claimed)) and set(claimed) == set(ids)  # each exactly once
    assert all(storage.get_run(i)["status"] == "running" for i in ids)


def test_worker_writes_while_another_thread_reads(storage):
    run_id = storage.create_run({"method": "lora", "settings": {}})
    errors, done = [], threading.Event()

    def write():
        try:
            for step in range(1, 201):
                storage.add_metrics(run_id, step, step * 0.01, {"train/loss": 1.0 / step})
                storage.update_run(run_id, step=step)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            done.set()

    def read():
        last = 0
        try:
            while not done.is_set():
                rows = storage.metrics(run_id)
                assert len(rows) >= last  # never goes backwards, never half-written
                last = len(rows)
                storage.get_run(run_id)
                time.sleep(0.001)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(storage.metrics(run_id)) == 200 and storage.get_run(run_id)["step"] == 200


def test_file_store_refuses_escapes(storage):
    assert safe_name("../../etc/passwd") == "etc-passwd"
    assert safe_name("   ") == "item"
    with pytest.raises(ValueError):
        storage.files.resolve("../outside")
    first = storage.files.new_dir("datasets", "My Set!")
    second = storage.files.new_dir("datasets", "My Set!")
    assert first.name == "My-Set" and second.name == "My-Set-2"


def test_runs_get_a_tags_column_that_round_trips_as_a_list(storage):
    assert "tags" in storage.db["runs"].columns_dict
    run_id = storage.create_run({"method": "lora", "settings": {}})
    storage.update_run(run_id, tags=["baseline", "r16"])
    assert storage.get_run(run_id)["tags"] == ["baseline", "r16"]


def test_a_failed_commit_rolls_back_and_later_writes_still_commit(storage):
    run_id = storage.create_run({"method": "lora", "settings": {}})
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        with storage.atomic() as db:
            # A deferred foreign key is checked at COMMIT, so COMMIT itself raises.
            db.execute("pragma defer_foreign_keys = on")
            db.execute("insert into run_events (run_id, message) values (?, 'orphan')", [run_id + 99])
    assert not storage.db.conn.in_transaction  # the connection is clean again
    storage.update_run(run_id, step=7)
    other = Storage(storage.home)  # another connection sees the later write: it committed
    try:
        assert other.get_run(run_id)["step"] == 7
        assert other.db["run_events"].count == 0
    finally:
        other.close()


def test_a_transaction_sqlite_already_ended_keeps_the_original_error(storage):
    class Cause(Exception):
        pass

    with pytest.raises(Cause):  # not "cannot rollback - no transaction is active"
        with storage.atomic() as db:
            db.execute("rollback")  # what SQLite does itself on a full disk or an I/O error
            raise Cause("the real reason")
    assert not storage.db.conn.in_transaction
    storage.create_run({"method": "lora", "settings": {}})
    assert storage.db["runs"].count == 1


def test_a_finished_run_is_deleted_with_its_rows_and_an_active_one_is_not(storage):
    run_id = storage.create_run({"method": "lora", "settings": {}})
    storage.add_metrics(run_id, 1, 0.5, {"train/loss": 1.0})
    storage.add_event(run_id, "queued")
    storage.store_series(run_id, "train/loss", 1, {"step": [1], "wall_time": [0.5], "value": [1.0]})
    assert storage.delete_run(run_id) is False  # queued: a worker may claim it any moment
    storage.claim_next_run("host:1:0", run_id=run_id)
    assert storage.delete_run(run_id) is False and storage.get_run(run_id)["status"] == "running"
    storage.update_run(run_id, status="stopped")
    assert storage.delete_run(run_id) is True
    assert storage.get_run(run_id) is None
    for table in ("run_metrics", "run_events", "run_series"):
        assert storage.db.execute(f"select count(*) from {table} where run_id = ?", [run_id]).fetchone()[0] == 0
    with pytest.raises(PermissionError):
        storage.delete_run(run_id)  # gone: nothing of yours to delete
    # The next run does not take the deleted one's id: caches keyed by run id would mix them up.
    assert storage.create_run({"method": "lora", "settings": {}}) == run_id + 1


def test_runs_have_an_evaluation_phase_with_progress(storage):
    run_id = storage.create_run({"method": "lora", "settings": {}})
    storage.update_run(run_id, phase="final evaluation on the test split", phase_done=3, phase_total=9)
    run = storage.get_run(run_id)
    assert (run["phase"], run["phase_done"], run["phase_total"]) == ("final evaluation on the test split", 3, 9)


def test_a_study_and_its_runs_are_stored_all_or_nothing(storage):
    run = {"method": "lora", "settings": {"method": {}, "training": {}}, "warnings": ["careful"]}
    cell = {"method": "lora", "size_setting": None, "size": None, "targets": "", "seed": 1}
    with pytest.raises(sqlite3.OperationalError):  # the second run names a column that is not there
        storage.create_study({"name": "s"}, [{**run, "study_cell": cell}, {**run, "no_such_column": 1}])
    assert storage.list_studies() == [] and storage.list_runs() == []
    study_id, run_ids = storage.create_study({"name": "s"}, [{**run, "study_cell": cell}, dict(run)])
    assert [r["id"] for r in storage.study_runs(study_id)] == run_ids
    assert storage.study_runs(study_id)[0]["study_cell"] == cell
    assert [e["message"] for e in storage.events(run_ids[0])] == ["queued", "careful"]
    other = add_user(storage, "someone")
    assert storage.get_study(study_id, other) is None and storage.study_runs(study_id, other) == []
    with pytest.raises(PermissionError, match="no study"):
        storage.delete_study(study_id, other)
    assert storage.delete_study(study_id) is None  # its runs are queued: nothing removed
    assert len(storage.study_runs(study_id)) == 2


# Values for every JSON column, with text that ASCII-only JSON escapes (é, 你好) and a tuple.
REPORT = {"task": "asr", "columns": {"audio": "file_name"}, "problems": [{"message": "café 你好"}]}
SETTINGS = {"method": {"r": 8, "target_modules": ["q", "v"]}, "training": {"lr": 1e-4}}


def write_every_json_column(storage) -> dict[str, int]:
    """One row of each table that has a JSON column; their ids."""
    dataset_id = storage.add_dataset(
        {"name": "données", "task": "asr", "path": "datasets/d", "version": "v1",
         "splits": ["train", "test"], "labels": ["é", "b"], "report": REPORT},
        [{"split": "train", "position": 0, "file": "a.flac", "text": "naïve", "label": None}])
    item_id = storage.dataset_items(dataset_id)[0]["id"]
    storage.change_item(dataset_id, item_id, "edit", {"text": "naïf"}, "v2")
    model_id = storage.add_model({"name": "m", "family": "bert", "path": "models/m",
                                  "tasks": ("classification", "asr")})
    study_id, (run_id,) = storage.create_study(
        {"name": "s", "grid": {"methods": ["lora"], "seeds": [0, 1]}, "settings": {"lr": 1e-4}},
        [{"method": "lora", "settings": SETTINGS, "study_cell": {"method": "lora", "seed": 0}}])
    storage.update_run(run_id, metrics={"wer": 0.25, "notes": "très bien"}, tags=["a b", "ü"])
    storage.store_series(run_id, "train/loss", 3, {"step": [1, 2, 3], "value": [1.5, 1.0, 0.5]})
    return {"dataset": dataset_id, "model": model_id, "study": study_id, "run": run_id}


def read_every_json_column(storage, ids: dict[str, int]) -> dict:
    dataset = storage.find_dataset(ids["dataset"])
    run = storage.get_run(ids["run"])
    study = storage.get_study(ids["study"])
    (change,) = storage.dataset_changes(ids["dataset"])
    return {"splits": dataset["splits"], "labels": dataset["labels"], "report": dataset["report"],
            "before": change["before"], "after": change["after"],
            "tasks": storage.find_model(ids["model"])["tasks"],
            "settings": run["settings"], "metrics": run["metrics"], "tags": run["tags"],
            "study_cell": run["study_cell"], "grid": study["grid"], "study settings": study["settings"],
            "points": storage.stored_series(ids["run"], "train/loss")["columns"]}


EXPECTED = {"splits": ["train", "test"], "labels": ["é", "b"], "report": REPORT,
            "before": {"split": "train", "file": "a.flac", "text": "naïve", "label": None},
            "after": {"text": "naïf"}, "tasks": ["classification", "asr"],  # a tuple comes back a list
            "settings": SETTINGS, "metrics": {"wer": 0.25, "notes": "très bien"}, "tags": ["a b", "ü"],
            "study_cell": {"method": "lora", "seed": 0}, "grid": {"methods": ["lora"], "seeds": [0, 1]},
            "study settings": {"lr": 1e-4},
            "points": {"step": [1, 2, 3], "value": [1.5, 1.0, 0.5]}}


def stored_json_texts(path) -> dict[tuple[str, str], str]:
    """(table, column) -> text of every stored value that is a JSON object or array, read with
    plain sqlite3 (what is on disk, not what Storage makes of it)."""
    found = {}
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")]
        for table in tables:
            cursor = conn.execute(f"select * from [{table}]")
            names = [d[0] for d in cursor.description]
            for row in cursor:
                for column, value in zip(names, row):
                    if isinstance(value, str) and value[:1] in "[{":
                        found[(table, column)] = value
    return found


def test_every_json_column_round_trips_through_a_real_sqlite_file(tmp_path):
    from storage.rows import JSON_COLUMNS

    first = Storage(tmp_path / "home")
    ids = write_every_json_column(first)
    first.close()
    reopened = Storage(tmp_path / "home")  # a fresh connection reads what is on disk
    try:
        assert read_every_json_column(reopened, ids) == EXPECTED
    finally:
        reopened.close()
    stored = stored_json_texts(tmp_path / "home" / "workbench.db")
    # sqlite-utils wrote JSON text (not a repr), non-ASCII kept as UTF-8 rather than \u escapes
    assert json.loads(stored[("datasets", "report")]) == REPORT
    assert "café 你好" in stored[("datasets", "report")]
    assert json.loads(stored[("models", "tasks")]) == ["classification", "asr"]
    # one list of JSON columns: each one written above is in it, and nothing else stored is JSON
    assert {column for _, column in stored} == JSON_COLUMNS


def test_rows_written_by_the_old_hand_encoding_still_read(tmp_path):
    """Before sqlite-utils encoded them, JSON columns were written by ``json.dumps(value)``
    (ASCII only: é stored as \\u00e9). Rows from such a database read back as before."""
    home = tmp_path / "home"
    new = Storage(home)
    ids = write_every_json_column(new)
    new.close()
    path = home / "workbench.db"
    new_texts = stored_json_texts(path)
    with sqlite3.connect(path) as conn:  # rewrite every JSON value as the old code stored it
        for (table, column), text in new_texts.items():
            conn.execute(f"update [{table}] set [{column}] = ?", [json.dumps(json.loads(text))])
    old_texts = stored_json_texts(path)
    assert old_texts[("datasets", "report")] != new_texts[("datasets", "report")]  # other bytes
    assert "caf\\u00e9" in old_texts[("datasets", "report")]
    old = Storage(home)
    try:
        assert read_every_json_column(old, ids) == EXPECTED
        old.update_run(ids["run"], tags=["new"])  # old and new rows live side by side
        assert old.get_run(ids["run"])["tags"] == ["new"]
        assert old.get_run(ids["run"])["settings"] == SETTINGS
    finally:
        old.close()


# ---------------------------------------------------------------------------- the fair queue
def queue_of(storage, owners: list[int]) -> list[int]:
    """Queue one run per entry of ``owners`` (in that order); returns their ids."""
    return [storage.create_run({"method": "lora", "settings": {}, "owner_id": owner}) for owner in owners]


def claim_all(storage, worker="host:1:1") -> list[int]:
    """Claim runs one at a time as one worker would, each ending before the next is taken."""
    taken = []
    while (run := storage.claim_next_run(worker)) is not None:
        taken.append(run["id"])
        storage.update_run(run["id"], status="completed", heartbeat_at=time.time() + len(taken))
    return taken


def test_owners_take_turns_by_submission(storage):
    alice, bob, carol = LOCAL_USER_ID, add_user(storage, "bob"), add_user(storage, "carol")
    a1, a2, a3, a4, a5 = queue_of(storage, [alice] * 5)
    b1, = queue_of(storage, [bob])
    # alice's five runs do not starve bob's one: turns alternate owners, by submission
    assert [r["id"] for r in storage.queued_runs()] == [a1, b1, a2, a3, a4, a5]
    b2, c1 = queue_of(storage, [bob, carol])
    assert [r["id"] for r in storage.queued_runs()] == [a1, b1, c1, a2, b2, a3, a4, a5]
    assert [r["id"] for r in storage.queued_runs(owner_id=bob)] == [b1, b2]
    assert claim_all(storage) == [a1, b1, c1, a2, b2, a3, a4, a5]  # the shown order is the claims'


def test_the_owner_served_least_recently_goes_first_in_a_turn(storage):
    alice, bob = LOCAL_USER_ID, add_user(storage, "bob")
    a1, a2 = queue_of(storage, [alice, alice])
    assert storage.claim_next_run("host:1:1")["id"] == a1  # alice trains now
    b1, = queue_of(storage, [bob])  # submitted later than a2, but bob has not had a turn
    assert [r["id"] for r in storage.queued_runs()] == [b1, a2]
    storage.update_run(a1, status="completed")
    assert claim_all(storage) == [b1, a2]


def test_an_admins_move_pins_the_run_and_the_runs_ahead(storage):
    alice, bob = LOCAL_USER_ID, add_user(storage, "bob")
    a1, a2, a3 = queue_of(storage, [alice] * 3)
    b1, b2 = queue_of(storage, [bob] * 2)
    assert [r["id"] for r in storage.queued_runs()] == [a1, b1, a2, b2, a3]
    assert storage.move_in_queue(a3, 2, pin=True)[:2] == [a1, a3]
    assert [(r["id"], r["queue_pinned"]) for r in storage.queued_runs()][:3] == [(a1, 1), (a3, 1), (b1, 0)]
    # alice's pinned runs used two of her turns: bob's two come before her third
    assert [r["id"] for r in storage.queued_runs()] == [a1, a3, b1, b2, a2]
    b3, = queue_of(storage, [bob])  # a later run takes turns behind the pinned ones
    assert [r["id"] for r in storage.queued_runs()] == [a1, a3, b1, b2, a2, b3]
    assert storage.move_in_queue(b3, 1, pin=True)[:3] == [b3, a1, a3]
    assert storage.move_in_queue(a1, 99, pin=True) == [b3, a3, b1, a2, b2, a1]  # the end: all pinned
    assert claim_all(storage) == [b3, a3, b1, a2, b2, a1]


def test_an_owners_move_changes_places_with_their_own_runs_only(storage):
    alice, bob = LOCAL_USER_ID, add_user(storage, "bob")
    a1, a2, a3 = queue_of(storage, [alice] * 3)
    b1, b2 = queue_of(storage, [bob] * 2)
    # bob asks for position 1: he gets his own first turn (position 2), not alice's
    assert storage.move_in_queue(b2, 1) == [a1, b2, a2, b1, a3]
    assert storage.move_in_queue(a3, 1) == [a3, b2, a1, b1, a2]
    assert storage.move_in_queue(a3, 5) == [a1, b2, a2, b1, a3]
    storage.requeue_run(b2)  # a resumed run goes to the end of its owner's turns
    assert [r["id"] for r in storage.queued_runs()] == [a1, b1, a2, b2, a3]


def test_two_workers_never_claim_the_same_run_of_a_fair_queue(tmp_path):
    first, second = Storage(tmp_path / "home"), Storage(tmp_path / "home")  # like two processes
    owners = [LOCAL_USER_ID] + [add_user(first, f"user{i}") for i in range(3)]
    ids = queue_of(first, [owners[i % 4] for i in range(12)] + [owners[0]] * 6)
    claimed, lock = [], threading.Lock()

    def claim(storage, worker):
        while (run := storage.claim_next_run(worker)) is not None:
            with lock:
                claimed.append(run["id"])

    threads = [threading.Thread(target=claim, args=(store, f"host{i}:{i}:1"))
               for i, store in enumerate([first, second, first, second])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # each host holds one run at a time: four hosts, four claims, each a different run
    assert len(claimed) == 4 and set(claimed) == set(ids[:4])  # every owner's first turn
    assert all(first.get_run(i, owner_id=None)["status"] == "running" for i in claimed)
    for store in (first, second):
        store.close()
