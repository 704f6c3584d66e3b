"""Database schema as an ordered list of sqlite-utils migrations.

Add a new function decorated with ``@migrations()`` at the end to change the schema; never edit
one that has shipped. ``migrations.apply(db)`` runs the pending ones inside a transaction each.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("lessismore")

# The single local owner every item belongs to until accounts exist.
LOCAL_USER_ID = 1


@migrations()
def m001_initial(db: Database) -> None:
    db["users"].create(
        {"id": int, "name": str, "password_hash": str, "is_admin": int, "created_at": str},
        pk="id",
        not_null={"name"},
    )
    db["users"].create_index(["name"], unique=True)
    db["users"].insert(
        {"id": LOCAL_USER_ID, "name": "local", "password_hash": None, "is_admin": 1,
         "created_at": _now_sql(db)}
    )

    db["datasets"].create(
        {
            "id": int, "owner_id": int, "name": str, "task": str, "path": str,
            "version": str, "num_items": int, "splits": str, "labels": str,
            "shared": int, "is_demo": int, "description": str, "created_at": str,
        },
        pk="id",
        not_null={"owner_id", "name", "task", "path"},
        foreign_keys=[("owner_id", "users")],
    )
    db["datasets"].create_index(["owner_id", "name"], unique=True)

    db["dataset_items"].create(
        {
            "id": int, "dataset_id": int, "split": str, "position": int,
            "file": str, "text": str, "label": str, "duration_s": float,
        },
        pk="id",
        not_null={"dataset_id", "split"},
        foreign_keys=[("dataset_id", "datasets")],
    )
    db["dataset_items"].create_index(["dataset_id", "split", "position"])

    db["models"].create(
        {
            "id": int, "owner_id": int, "name": str, "family": str, "tasks": str,
            "source": str, "path": str, "is_preset": int, "shared": int,
            "description": str, "num_parameters": int, "created_at": str,
        },
        pk="id",
        not_null={"owner_id", "name", "family", "path"},
        foreign_keys=[("owner_id", "users")],
    )
    db["models"].create_index(["owner_id", "name"], unique=True)

    # dataset/model ids are kept without foreign keys on purpose: a run keeps its record
    # (and the names it was made with) after its dataset or model is deleted.
    db["runs"].create(
        {
            "id": int, "owner_id": int, "status": str, "method": str, "task": str,
            "dataset_id": int, "dataset_name": str, "dataset_version": str,
            "model_id": int, "model_name": str, "settings": str,
            "created_at": str, "started_at": str, "finished_at": str,
            "step": int, "total_steps": int, "wall_time_s": float,
            "trainable_params": int, "total_params": int, "peak_memory_mb": float,
            "metrics": str, "adapter_dir": str, "checkpoint_dir": str, "error": str,
            "stop_requested": int, "worker": str, "heartbeat_at": float,
        },
        pk="id",
        not_null={"owner_id", "status", "method"},
        defaults={"step": 0, "stop_requested": 0},
        foreign_keys=[("owner_id", "users")],
    )
    db["runs"].create_index(["status", "id"])

    db["run_metrics"].create(
        {"run_id": int, "step": int, "wall_time": float, "name": str, "value": float},
        pk=("run_id", "name", "step"),
        foreign_keys=[("run_id", "runs")],
    )
    db["run_events"].create(
        {"id": int, "run_id": int, "time": str, "level": str, "message": str},
        pk="id",
        foreign_keys=[("run_id", "runs")],
    )
    db["run_events"].create_index(["run_id", "id"])


@migrations()
def m002_datasets_item_history(db: Database) -> None:
    """What an item was made from (original rate, channels, file, content hash) and its edits."""
    items = db["dataset_items"]
    for column, kind in (("source_name", str), ("sample_rate", int), ("channels", int),
                         ("content_hash", str), ("original_file", str)):
        items.add_column(column, kind)
    db["datasets"].add_column("report", str)
    db["dataset_changes"].create(
        {"id": int, "dataset_id": int, "item_id": int, "time": str, "action": str,
         "before": str, "after": str, "version_before": str, "version_after": str},
        pk="id",
    )  # deleted with its dataset (Storage.delete_dataset); no foreign key keeps deletes simple
    db["dataset_changes"].create_index(["dataset_id", "id"])


@migrations()
def m003_compare_run_tags(db: Database) -> None:
    """Free-form tags on runs (a JSON list), to group and filter runs on the Compare page."""
    db["runs"].add_column("tags", str)


@migrations()
def m004_runs_queue_position(db: Database) -> None:
    """The queue's order: a worker claims the queued run with the lowest position (then id).

    Existing runs get their id as position, so the order they were submitted in is kept.
    """
    db["runs"].add_column("queue_position", int)
    db.execute("update runs set queue_position = id")
    db["runs"].create_index(["status", "queue_position", "id"])



@migrations()
def m005_runs_display_series(db: Database) -> None:
    """Each finished run's metric series, downsampled once for display (engine/series.py)."""
    db["run_series"].create(
        {"run_id": int, "name": str, "last_step": int, "points": str},
        pk=("run_id", "name"),
    )


@migrations()
def m006_runs_phase(db: Database) -> None:
    """What a running run is doing besides training steps (its evaluation), with its own
    progress: ``phase`` (e.g. "final evaluation on the test split"), examples done / total."""
    for column, kind in (("phase", str), ("phase_done", int), ("phase_total", int)):
        db["runs"].add_column(column, kind)


@migrations()
def m007_deleted_run_ids(db: Database) -> None:
    """Ids of deleted runs, so a new run never takes a deleted one's id (SQLite hands out
    max(id) + 1): caches keyed by run id (loaded models, live series) must not mistake a new
    run for the deleted one."""
    db["deleted_runs"].create({"id": int}, pk="id")


@migrations()
def m008_studies(db: Database) -> None:
    """Studies: a grid of runs (methods x ranks or budgets x target sets x seeds) on one dataset
    and model. ``grid`` and ``settings`` (JSON) say what was asked; each run of a study keeps
    ``study_id`` and its ``study_cell`` (JSON: method, size, targets, seed). Owned like runs."""
    db["studies"].create(
        {"id": int, "owner_id": int, "name": str, "dataset_id": int, "dataset_name": str,
         "model_id": int, "model_name": str, "grid": str, "settings": str, "created_at": str},
        pk="id",
        not_null={"owner_id", "name"},
        foreign_keys=[("owner_id", "users")],
    )
    db["studies"].create_index(["owner_id", "id"])
    db["runs"].add_column("study_id", int)  # no foreign key: deleting a study deletes its runs
    db["runs"].add_column("study_cell", str)
    db["runs"].create_index(["study_id", "id"])


@migrations()
def m009_accounts(db: Database) -> None:
    """Accounts (issue 17): users can be disabled; runs (and studies) can be shared read-only;
    failed log-ins are recorded per username and per client, to slow down password guessing."""
    db["users"].add_column("disabled", int, not_null_default=0)
    db["users"].add_column("last_login_at", str)
    db["runs"].add_column("shared", int, not_null_default=0)
    db["studies"].add_column("shared", int, not_null_default=0)
    db["login_failures"].create(
        {"id": int, "username": str, "client": str, "at": float}, pk="id")
    db["login_failures"].create_index(["username", "at"])
    db["login_failures"].create_index(["client", "at"])


@migrations()
def m010_runs_fair_queue_and_clock(db: Database) -> None:
    """Issue 27. The fair queue: queued runs take turns by owner (round robin); a run an admin
    moved is pinned at its place, ahead of the turns (storage/runs.py, ``FAIR_ORDER``). The
    clock: when ``wall_time_s`` was last written (Unix time), so elapsed keeps moving between
    steps (engine/training/clock.py)."""
    db["runs"].add_column("queue_pinned", int, not_null_default=0)
    db["runs"].add_column("wall_time_at", float)


@migrations()
def m011_login_sessions(db: Database) -> None:
    """Log-in sessions (issue 27): what a browser's cookie stands for. Only digests are stored:
    ``token_hash`` of the cookie's token, ``code_hash`` of the one-time code that turns a log-in
    into that cookie (with ``code_until`` and ``binding``, the digest of the browser's XSRF
    secret). ``last_seen_at`` slides the idle expiry; ``ended_at`` / ``ended_why`` say why a
    session ended (logged out, idle, disabled, password changed), for the message on its tabs."""
    db["login_sessions"].create(
        {"id": int, "user_id": int, "token_hash": str, "code_hash": str, "code_until": float,
         "binding": str, "created_at": float, "last_seen_at": float, "ended_at": float,
         "ended_why": str},
        pk="id",
        not_null={"user_id", "created_at", "last_seen_at"},
        foreign_keys=[("user_id", "users")],
    )
    db["login_sessions"].create_index(["token_hash"], unique=True)
    db["login_sessions"].create_index(["code_hash"], unique=True)
    db["login_sessions"].create_index(["user_id"])


@migrations()
def m012_runs_slots(db: Database) -> None:
    """Issue 29, runs side by side (engine/training/slots.py): ``estimate_mb``, the run's memory
    estimate when it was queued (what ``LIM_SLOTS=auto`` fits runs by), and ``run_alone``, set
    when a run ran out of memory beside others: it is claimed only when nothing else trains on
    its host, and nothing else starts beside it."""
    db["runs"].add_column("estimate_mb", float)
    db["runs"].add_column("run_alone", int, not_null_default=0)


def _now_sql(db: Database) -> str:
    return db.execute("select strftime('%Y-%m-%dT%H:%M:%SZ', 'now')").fetchone()[0]
