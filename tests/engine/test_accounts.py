"""Accounts (issue 17): sign-up, log-in, slow-down, per-user isolation through the facade and
the command line, sharing, admin actions. Real SQLite files; runs are queued, not trained (every
check of another user's run happens before anything would train or load)."""

from __future__ import annotations

import io
import json
import sqlite3

import pytest
from argon2 import PasswordHasher

from engine.cli import main
from engine.data.pipeline import ImportOptions
from engine.errors import AuthError, DatasetError, NotFoundError, RunError
from tests.audio_files import speech_folder
from engine.workbench.accounts import FREE_FAILURES_PER_CLIENT, FREE_FAILURES_PER_USER

PASSWORD_A, PASSWORD_B = "correct horse battery", "staple gun sunrise"


@pytest.fixture
def people(workbench):
    """(admin ada, plain bob, carol) views of one workbench; bob has a queued run and a private
    text dataset."""
    ada = workbench.for_user(workbench.sign_up("ada", PASSWORD_A))
    bob = workbench.for_user(workbench.sign_up("bob", PASSWORD_B))
    carol = workbench.for_user(workbench.sign_up("carol", "plum orchard winter"))
    return ada, bob, carol


def bobs_dataset(bob, tmp_path) -> dict:
    table = tmp_path / "reviews.csv"
    table.write_text("text,label\n" + "".join(f"review {i} {'good' if i % 2 else 'bad'},"
                                             f"{'pos' if i % 2 else 'neg'}\n" for i in range(40)))
    with table.open("rb") as stream:  # uploaded: with accounts, a server path is for admins only
        plan = bob.check_import(bob.save_upload(table.name, stream),
                                ImportOptions(task="text-classification"))
    return bob.commit_import(plan, "bobs-reviews")


def bobs_run(bob) -> int:
    return bob.submit_run("demo-text", "tiny-bert", "lora", {}, {"max_steps": 2})


def test_sign_up_log_in_and_the_first_account_is_the_admin(workbench):
    ada = workbench.sign_up("ada", PASSWORD_A)
    bob = workbench.sign_up("bob", PASSWORD_B)
    assert (ada["is_admin"], bob["is_admin"]) == (1, 0)
    assert "password_hash" not in ada
    assert workbench.log_in("Ada", PASSWORD_A)["id"] == ada["id"]  # names ignore case
    with pytest.raises(AuthError, match="wrong username or password"):
        workbench.log_in("ada", PASSWORD_B)
    with pytest.raises(AuthError, match="wrong username or password"):  # same words: no name probing
        workbench.log_in("nobody", PASSWORD_A)
    with pytest.raises(AuthError, match="taken"):
        workbench.sign_up("ADA", "another long password")


def test_with_signup_admin_only_an_admin_makes_accounts_after_the_first(workbench, monkeypatch, capsys):
    monkeypatch.setenv("LIM_SIGNUP", "admin")
    ada = workbench.for_user(workbench.sign_up("ada", PASSWORD_A))  # the first: the admin
    assert ada.user["is_admin"]
    with pytest.raises(AuthError, match="made by an admin; ask one"):
        workbench.sign_up("bob", PASSWORD_B)
    assert [u["name"] for u in ada.list_users() if u["has_password"]] == ["ada"]  # nothing half-made
    bob = workbench.for_user(ada.add_user("bob", PASSWORD_B))
    assert not bob.user["is_admin"] and workbench.log_in("bob", PASSWORD_B)["id"] == bob.owner_id
    with pytest.raises(AuthError, match="only an admin"):
        bob.add_user("carol", "plum orchard winter")
    assert ada.add_user("dan", "a long enough secret", is_admin=True)["is_admin"]
    with pytest.raises(AuthError, match="at least 10 characters"):  # the same rules as a sign-up
        ada.add_user("eve", "short")
    # the command line of the machine holding the data home adds accounts whatever signup says
    code, out, _ = run_cli(monkeypatch, capsys, "users", "add", "erin", stdin="quiet river stones\n")
    assert code == 0 and "added erin" in out
    monkeypatch.setenv("LIM_SIGNUP", "open")
    assert workbench.sign_up("frank", "blue kettle morning")["is_admin"] == 0
    monkeypatch.setenv("LIM_SIGNUP", "nobody")
    with pytest.raises(Exception, match="signup"):
        workbench.sign_up("gina", "green paper lantern")


@pytest.mark.parametrize("name, password, problem", [
    ("dan", "short1!", "at least 10 characters"),
    ("dan", "password123", "too easy"),
    ("dan", "aaaaaaaaaaaaaa", "too easy"),
    ("dan", "dan-is-the-best", "must not contain the username"),
    ("../etc", "a perfectly long one", "a username has"),
    ("<b>x</b>", "a perfectly long one", "a username has"),
    ("local", "a perfectly long one", "reserved"),
])
def test_weak_passwords_and_bad_names_are_refused(workbench, name, password, problem):
    with pytest.raises(AuthError, match=problem):
        workbench.sign_up(name, password)
    assert workbench.storage.count_accounts() == 0


def test_stored_hashes_are_argon2_not_the_password_and_verify(workbench):
    workbench.sign_up("ada", PASSWORD_A)
    with sqlite3.connect(workbench.storage.path) as conn:
        (stored,) = conn.execute("select password_hash from users where name = 'ada'").fetchone()
    assert stored.startswith("$argon2id$") and PASSWORD_A not in stored
    assert PasswordHasher().verify(stored, PASSWORD_A)


def test_failed_log_ins_are_slowed_per_username(workbench):
    workbench.sign_up("ada", PASSWORD_A)
    now = 1_000_000.0
    for attempt in range(FREE_FAILURES_PER_USER):  # the first few are free
        with pytest.raises(AuthError, match="wrong username or password"):
            workbench.log_in("ada", f"guess number {attempt}", client="10.0.0.1", now=now)
    # Then each attempt waits: 1 s after the third failure (the password is not even checked) ...
    with pytest.raises(AuthError, match="too many failed log-ins for 'ada'; try again in 1 s"):
        workbench.log_in("ada", PASSWORD_A, client="10.0.0.2", now=now + 0.5)
    with pytest.raises(AuthError, match="wrong username or password"):
        workbench.log_in("ada", "guess number 4", client="10.0.0.1", now=now + 1.1)
    # ... 2 s after the fourth, from any client: the limit follows the name.
    with pytest.raises(AuthError, match="too many failed log-ins for 'ada'; try again in 2 s"):
        workbench.log_in("ada", PASSWORD_A, client="10.0.0.3", now=now + 1.5)
    assert workbench.log_in("ada", PASSWORD_A, client="10.0.0.2", now=now + 3.2)["name"] == "ada"
    # A good log-in forgets the failures: the next wrong one is free again.
    with pytest.raises(AuthError, match="wrong username"):
        workbench.log_in("ada", "one more guess", now=now + 3.3)
    assert workbench.log_in("ada", PASSWORD_A, now=now + 3.4)["name"] == "ada"


def test_failed_log_ins_are_slowed_per_client(workbench):
    workbench.sign_up("ada", PASSWORD_A)
    now = 2_000_000.0
    for n in range(FREE_FAILURES_PER_CLIENT):  # a different name each time: only the client repeats
        with pytest.raises(AuthError, match="wrong"):
            workbench.log_in(f"name{n}", "whatever it is", client="198.51.100.9", now=now)
    with pytest.raises(AuthError, match="from this address"):
        workbench.log_in("ada", PASSWORD_A, client="198.51.100.9", now=now + 0.1)
    assert workbench.log_in("ada", PASSWORD_A, client="198.51.100.10", now=now + 0.1)["name"] == "ada"


def test_another_users_run_is_not_found_through_every_facade_call(people, tmp_path):
    ada, bob, carol = people
    run_id = bobs_run(bob)
    assert [r["id"] for r in bob.list_runs()] == [run_id]
    assert carol.list_runs() == [] and carol.queue()[0]["dataset"] == "(another user's)"
    calls = {
        "show": lambda: carol.run_summary(run_id), "get": lambda: carol.get_run(run_id),
        "stop": lambda: carol.stop_run(run_id), "resume": lambda: carol.resume_run(run_id),
        "cancel": lambda: carol.cancel_run(run_id), "move": lambda: carol.move_run(run_id, 1),
        "delete": lambda: carol.delete_run(run_id), "tag": lambda: carol.tag_run(run_id, "x"),
        "export": lambda: carol.export_run(run_id, "adapter", tmp_path / "out.zip"),
        "clone": lambda: carol.clone_run(run_id), "compare": lambda: carol.compare_runs([run_id]),
        "metrics": lambda: carol.live_metrics(run_id), "events": lambda: carol.run_events(run_id),
        "play": lambda: carol.predict({"text": "hi"}, model="tiny-bert", task="text-classification",
                                      run_id=run_id),
        "share": lambda: carol.share("run", run_id),
    }
    for name, call in calls.items():
        with pytest.raises(NotFoundError, match=f"no run {run_id}"):
            call()
    # Models stay loaded for everybody (one cache): one bob's run loaded is not handed to carol.
    class CacheHoldingBobsModel:
        def get(self, key, load, run_id):
            return "bob's loaded model"

    assert bob.loaded_model("tiny-bert", run_id, cache=CacheHoldingBobsModel()) == "bob's loaded model"
    with pytest.raises(NotFoundError, match=f"no run {run_id}"):
        carol.loaded_model("tiny-bert", run_id, cache=CacheHoldingBobsModel())
    assert bob.get_run(run_id)["status"] == "queued"  # nothing happened to it
    assert not (tmp_path / "out.zip").exists()


def test_another_users_dataset_and_model_are_not_found(people, tmp_path):
    ada, bob, carol = people
    dataset = bobs_dataset(bob, tmp_path)
    assert "bobs-reviews" not in {d["name"] for d in carol.list_datasets()}
    for call in (lambda: carol.get_dataset(dataset["id"]), lambda: carol.get_dataset("bobs-reviews"),
                 lambda: carol.dataset_items("bobs-reviews"), lambda: carol.delete_dataset(dataset["id"]),
                 lambda: carol.export_dataset("bobs-reviews"), lambda: carol.remove_item(dataset["id"], 1),
                 lambda: carol.submit_run("bobs-reviews", "tiny-bert", "lora")):
        with pytest.raises(NotFoundError, match="no dataset"):
            call()
    # Carol may use the same name for her own set: names are per owner.
    bob.get_dataset("bobs-reviews")
    assert carol.storage.find_dataset("bobs-reviews", carol.owner_id) is None


def test_shared_items_are_read_only_to_others(people, tmp_path):
    ada, bob, carol = people
    dataset, run_id = bobs_dataset(bob, tmp_path), bobs_run(bob)
    bob.cancel_run(run_id)
    bob.share("dataset", "bobs-reviews")
    bob.share("run", run_id)
    assert carol.get_dataset("bobs-reviews")["id"] == dataset["id"]
    assert carol.run_summary(run_id)["owner"] == "bob" and carol.list_runs()[0]["id"] == run_id
    with pytest.raises(DatasetError, match="shared with you read-only"):
        carol.delete_dataset("bobs-reviews")
    with pytest.raises(DatasetError, match="read-only"):
        carol.remove_item("bobs-reviews", carol.dataset_items("bobs-reviews", limit=1)[0]["id"])
    for call in (lambda: carol.delete_run(run_id), lambda: carol.resume_run(run_id),
                 lambda: carol.tag_run(run_id, "mine")):
        with pytest.raises(RunError, match="another user's, shared with you read-only"):
            call()
    with pytest.raises(AuthError, match="only its owner"):
        carol.share("run", run_id, False)
    clone = carol.clone_run(run_id)  # reading includes making your own copy
    assert carol.get_run(clone)["owner_id"] == carol.owner_id
    bob.share("run", run_id, False)
    with pytest.raises(NotFoundError):
        carol.get_run(run_id)
    # The demo sets and presets are shared with everybody, read-only.
    assert {"demo-speech", "demo-text"} <= {d["name"] for d in carol.list_datasets()}
    with pytest.raises(DatasetError, match="read-only"):
        carol.delete_dataset("demo-speech")


def test_admin_sees_all_stops_any_run_disables_and_resets(people):
    ada, bob, carol = people
    run_id = bobs_run(bob)
    assert ada.get_run(run_id)["owner_id"] == bob.owner_id
    with pytest.raises(RunError, match="another user's"):
        ada.delete_run(run_id)  # seeing is not owning
    assert ada.stop_run(run_id) == "cancelled"  # but the one device is everybody's: admins may stop
    with pytest.raises(AuthError, match="only an admin"):
        carol.set_user_disabled("bob")
    ada.set_user_disabled("bob")
    with pytest.raises(AuthError, match="disabled"):
        ada.log_in("bob", PASSWORD_B)
    assert ada.current_user(bob.owner_id) is None  # open sessions end at their next page
    ada.set_user_disabled("bob", False)
    ada.reset_password("bob", "a brand new passphrase")
    with pytest.raises(AuthError, match="wrong"):
        ada.log_in("bob", PASSWORD_B)
    assert ada.log_in("bob", "a brand new passphrase")["name"] == "bob"
    with pytest.raises(AuthError, match="only an admin"):
        carol.reset_password("bob", "carol's choice here")
    assert {u["name"] for u in ada.list_users()} >= {"ada", "bob", "carol"}


def run_cli(monkeypatch, capsys, *args, stdin: str = ""):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_users_add_reads_stdin_and_acts_as_the_named_user(demo_home, monkeypatch, capsys):
    monkeypatch.setenv("LIM_AUTH", "on")
    code, out, _ = run_cli(monkeypatch, capsys, "users", "add", "ada", stdin=PASSWORD_A + "\n")
    assert code == 0 and "added ada (admin)" in out
    assert run_cli(monkeypatch, capsys, "users", "add", "bob", stdin=PASSWORD_B + "\n")[0] == 0
    code, _, err = run_cli(monkeypatch, capsys, "users", "add", "eve", stdin="weak\n")
    assert code == 1 and "at least 10 characters" in err
    with pytest.raises(SystemExit):  # there is no way to pass a password as an argument
        main(["users", "add", "eve", "--password", "x" * 12])

    code, _, err = run_cli(monkeypatch, capsys, "runs", "list")
    assert code == 1 and "--user NAME or set LIM_USER" in err
    code, out, _ = run_cli(monkeypatch, capsys, "--user", "bob", "train", "--dataset", "demo-text",
                           "--model", "tiny-bert", "--method", "lora", "--json")
    assert code == 0
    run_id = json.loads(out)["id"]
    code, _, err = run_cli(monkeypatch, capsys, "--user", "carl", "runs", "list")
    assert code == 1 and "no user 'carl'" in err
    monkeypatch.setenv("LIM_USER", "ada")
    assert run_cli(monkeypatch, capsys, "users", "add", "carl", stdin="a long enough secret\n")[0] == 0
    monkeypatch.setenv("LIM_USER", "carl")
    for args in (["runs", "show", str(run_id)], ["runs", "stop", str(run_id)],
                 ["runs", "delete", str(run_id), "--yes"], ["runs", "clone", str(run_id)],
                 ["runs", "export", str(run_id), "--format", "adapter", "--out", "x.zip"]):
        code, _, err = run_cli(monkeypatch, capsys, *args)
        assert (code, err.strip()) == (1, f"error: no run {run_id}"), args
    code, out, _ = run_cli(monkeypatch, capsys, "runs", "list", "--json")
    assert (code, json.loads(out)) == (0, [])
    code, out, _ = run_cli(monkeypatch, capsys, "--user", "bob", "runs", "show", str(run_id), "--json")
    assert code == 0 and json.loads(out)["status"] == "queued"


def test_another_users_study_is_not_found(people):
    from engine.studies import Grid

    ada, bob, carol = people
    study_id = bob.submit_study("demo-text", "tiny-bert", Grid(["lora"], seeds=[1, 2]), {"max_steps": 2})
    assert [s["id"] for s in bob.list_studies()] == [study_id] and carol.list_studies() == []
    for call in (lambda: carol.get_study(study_id), lambda: carol.study_runs(study_id),
                 lambda: carol.study_summary(study_id), lambda: carol.stop_study(study_id),
                 lambda: carol.delete_study(study_id)):
        with pytest.raises(NotFoundError):
            call()
    assert {r["status"] for r in bob.study_runs(study_id)} == {"queued"}  # untouched
    bob.stop_study(study_id)


def test_a_shared_study_is_read_only_to_others_and_admins_see_every_study(people):
    from engine.studies import Grid

    ada, bob, carol = people
    study_id = bob.submit_study("demo-text", "tiny-bert", Grid(["lora"], seeds=[1, 2]), {"max_steps": 2})
    run_ids = [r["id"] for r in bob.study_runs(study_id)]
    # The admin sees it without sharing, with its runs; carol does not.
    assert [s["id"] for s in ada.list_studies()] == [study_id] and carol.list_studies() == []
    assert ada.study_summary(study_id)["owner"] == "bob"
    assert [r["id"] for r in ada.study_runs(study_id)] == run_ids
    with pytest.raises(AuthError, match="only its owner"):
        ada.share("study", study_id)  # seeing is not owning

    bob.share("study", study_id)  # shares its runs in the same transaction
    [listed] = carol.list_studies()
    assert (listed["id"], listed["owner"], listed["shared"], listed["runs_total"]) == (study_id, "bob", True, 2)
    summary = carol.study_summary(study_id)
    assert [r["id"] for r in summary["runs"]] == run_ids and len(summary["table"]) == 1
    assert {carol.get_run(run_id)["shared"] for run_id in run_ids} == {1}
    for call, doing in ((lambda: carol.stop_study(study_id), "stopped"),
                        (lambda: carol.delete_study(study_id), "deleted")):
        with pytest.raises(RunError, match=f"study {study_id} is another user's, shared with you "
                                           f"read-only; it cannot be {doing}"):
            call()
    with pytest.raises(AuthError, match="only its owner"):
        carol.share("study", study_id, False)
    assert {r["status"] for r in bob.study_runs(study_id)} == {"queued"}  # untouched

    # Like a run, an admin may stop another user's study (one device) but not delete it.
    assert ada.stop_study(study_id) == {"cancelled": 2, "stopping": 0}
    with pytest.raises(RunError, match="another user's"):
        ada.delete_study(study_id)
    with pytest.raises(RunError, match="cannot be deleted"):
        carol.delete_study(study_id)
    assert len(bob.study_runs(study_id)) == 2  # nothing removed

    bob.share("study", study_id, False)  # and unsharing takes its runs back too
    assert carol.list_studies() == []
    for call in [lambda: carol.study_summary(study_id)] + [lambda r=r: carol.get_run(r) for r in run_ids]:
        with pytest.raises(NotFoundError):
            call()
    assert bob.delete_study(study_id) == run_ids


def test_cli_shares_a_study_read_only(demo_home, monkeypatch, capsys):
    monkeypatch.setenv("LIM_AUTH", "on")
    for name, password in (("ada", PASSWORD_A), ("bob", PASSWORD_B), ("carol", "plum orchard winter")):
        assert run_cli(monkeypatch, capsys, "users", "add", name, stdin=password + "\n")[0] == 0
    code, out, _ = run_cli(monkeypatch, capsys, "--user", "bob", "study", "--dataset", "demo-text",
                           "--model", "tiny-bert", "--methods", "lora", "--seeds", "1,2",
                           "--set", "max_steps=2", "--json")
    assert code == 0
    study_id = json.loads(out)["id"]

    def as_user(user, *args):
        return run_cli(monkeypatch, capsys, "--user", user, *args)

    for args in (["study", "show", str(study_id)], ["study", "stop", str(study_id)],
                 ["study", "delete", str(study_id), "--yes"], ["share", "study", str(study_id)]):
        code, _, err = as_user("carol", *args)
        assert (code, err.strip()) == (1, f"error: no study {study_id}"), args
    assert json.loads(as_user("carol", "study", "list", "--json")[1]) == []
    code, out, _ = as_user("ada", "study", "show", str(study_id), "--json")  # the admin sees all
    assert code == 0 and json.loads(out)["owner"] == "bob"

    code, out, _ = as_user("bob", "share", "study", str(study_id))
    assert code == 0 and "shared read-only with everybody" in out
    [listed] = json.loads(as_user("carol", "study", "list", "--json")[1])
    assert (listed["id"], listed["shared"]) == (study_id, True)
    code, out, _ = as_user("carol", "study", "show", str(study_id), "--json")
    assert code == 0 and json.loads(out)["runs_total"] == 2
    for args, doing in ((["study", "stop", str(study_id)], "stopped"),
                        (["study", "delete", str(study_id), "--yes"], "deleted")):
        code, _, err = as_user("carol", *args)
        assert code == 1 and f"another user's, shared with you read-only; it cannot be {doing}" in err
    code, out, _ = as_user("bob", "study", "show", str(study_id), "--json")
    assert {r["status"] for r in json.loads(out)["runs"]} == {"queued"}

    assert as_user("bob", "share", "study", str(study_id), "--off")[0] == 0
    code, _, err = as_user("carol", "study", "show", str(study_id))
    assert (code, err.strip()) == (1, f"error: no study {study_id}")
    assert as_user("bob", "study", "stop", str(study_id))[0] == 0


# ---------------------------------------------------------------- server paths (issue 27, item 1)
def _alices_home_items(workbench, alice, tmp_path):
    """alice's imported speech set and a run folder file inside the data home."""
    source = tmp_path / "alice-src"
    speech_folder(source)  # a real audiofolder with WAV clips
    dataset = alice.import_dataset(source, "alice-speech", "asr")
    run_file = workbench.home / "runs" / "1" / "predictions.jsonl"
    run_file.parent.mkdir(parents=True, exist_ok=True)
    run_file.write_text('{"text": "alice private"}\n')
    return workbench.home / dataset["path"], run_file


def _datasets_of(workbench) -> list[str]:
    return sorted(d["name"] for d in workbench.storage.list_datasets(0, see_all=True))


def test_bob_cannot_import_alices_data_or_any_server_path(workbench, tmp_path, monkeypatch):
    monkeypatch.setenv("LIM_AUTH", "on")
    monkeypatch.setenv("LIM_IMPORT_ROOTS", str(tmp_path))
    alice = workbench.for_user(workbench.sign_up("alice", PASSWORD_A))  # the first: an admin
    bob = workbench.for_user(workbench.sign_up("bob", PASSWORD_B))
    alice_folder, run_file = _alices_home_items(workbench, alice, tmp_path)
    link = tmp_path / "innocent-looking"
    link.symlink_to(alice_folder)
    before = _datasets_of(workbench)
    assert not bob.server_import_allowed() and alice.server_import_allowed()
    for path in (alice_folder, run_file, "/etc", "/etc/passwd", link, str(tmp_path / "alice-src"),
                 f"{tmp_path}/../{tmp_path.name}/alice-src"):
        with pytest.raises(AuthError, match="for admins only"):
            bob.import_dataset(path, "copied-from-alice", "asr")
    # even an admin never reaches the data home, through a symlink or '..' either
    for path in (alice_folder, run_file, link, workbench.home / "datasets" / ".." / "runs"):
        with pytest.raises(AuthError, match="inside the workbench's data home"):
            alice.check_import(path)
    with pytest.raises(AuthError, match="outside the folders admins may import from"):
        alice.check_import("/etc")
    assert _datasets_of(workbench) == before  # nothing stored
    assert not list((workbench.home / "datasets").glob("copied-from-alice*"))
    # an admin inside an allowed root works
    assert alice.import_dataset(tmp_path / "alice-src", "alice-again", "asr")["name"] == "alice-again"
    # uploads stay open to everybody
    upload = tmp_path / "bob.csv"
    upload.write_text("text,label\n" + "".join(f"line {i},{'a' if i % 2 else 'b'}\n" for i in range(20)))
    with upload.open("rb") as stream:
        staged = bob.save_upload("bob.csv", stream)
    plan = bob.check_import(staged)
    assert bob.commit_import(plan, "bobs-upload")["name"] == "bobs-upload"


def test_with_no_import_roots_not_even_an_admin_imports_a_server_path(workbench, tmp_path, monkeypatch):
    monkeypatch.setenv("LIM_AUTH", "on")
    alice = workbench.for_user(workbench.sign_up("alice", PASSWORD_A))
    assert not alice.server_import_allowed()
    with pytest.raises(AuthError, match="LIM_IMPORT_ROOTS is empty"):
        alice.check_import(tmp_path)


def test_with_accounts_off_paths_work_except_the_data_home(workbench, tmp_path):
    speech_folder(tmp_path / "mine")
    assert workbench.server_import_allowed()
    assert workbench.import_dataset(tmp_path / "mine", "mine", "asr")["name"] == "mine"
    with pytest.raises(AuthError, match="inside the workbench's data home"):
        workbench.import_dataset(workbench.home / "datasets" / "mine", "again", "asr")


def test_cli_as_bob_cannot_import_a_server_path(demo_home, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LIM_AUTH", "on")
    run_cli(monkeypatch, capsys, "users", "add", "alice", "--admin", stdin=PASSWORD_A + "\n")
    run_cli(monkeypatch, capsys, "users", "add", "bob", stdin=PASSWORD_B + "\n")
    code, out, err = run_cli(monkeypatch, capsys, "--user", "bob", "datasets", "import",
                             str(demo_home / "datasets"), "--name", "stolen", "--task", "asr")
    assert code != 0 and "for admins only" in err
    assert "stolen" not in run_cli(monkeypatch, capsys, "--user", "bob", "datasets", "list", "--json")[1]


def test_queue_shows_another_users_run_only_as_its_place(people):
    ada, bob, carol = people
    theirs = bobs_run(bob)
    mine = carol.submit_run("demo-text", "tiny-bert", "lora", {}, {"max_steps": 2})
    rows = carol.queue()
    assert [row["position"] for row in rows] == [1, 2]
    assert rows[0] == {"position": 1, "id": None, "method": "(another user's)", "model": "(another user's)",
                       "dataset": "(another user's)", "mine": False, "step": None,
                       "estimated_duration_s": None, "estimated_start_in_s": None}
    assert rows[1]["id"] == mine and rows[1]["mine"]
    assert [row["id"] for row in ada.queue()] == [theirs, mine]  # the admin sees every run


def test_the_queue_is_fair_between_users_and_an_admin_can_pin_a_run(people):
    ada, bob, carol = people
    bobs = [bobs_run(bob) for _ in range(3)]
    carols = carol.submit_run("demo-text", "tiny-bert", "lora", {}, {"max_steps": 2})
    # bob's three runs do not starve carol's one: turns alternate owners
    assert [row["id"] for row in ada.queue()] == [bobs[0], carols, bobs[1], bobs[2]]
    assert [row["mine"] for row in carol.queue()] == [False, True, False, False]
    assert carol.run_summary(carols)["queue_position"] == 2
    # carol asks for position 1: her run keeps its turn (it changes places with her own runs only)
    carol.move_run(carols, 1)
    assert [row["id"] for row in ada.queue()] == [bobs[0], carols, bobs[1], bobs[2]]
    assert "asked for 1: runs take turns by owner" in carol.run_events(carols)[-1]["message"]
    bob.move_run(bobs[2], 1)  # bob reorders his own runs
    assert [row["id"] for row in ada.queue()] == [bobs[2], carols, bobs[0], bobs[1]]
    ada.move_run(carols, 1)  # the admin pins it first
    assert [row["id"] for row in ada.queue()][:1] == [carols]
    assert bob.run_summary(bobs[2])["queue_position"] == 2
