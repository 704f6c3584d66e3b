"""The Studies page's parts: the launch form, the study picker, its progress and actions, and
the merge of parts run on other machines; what a study found (table, comparisons, charts,
provenance, exports) is ui/study_results.py.

The page (pages/studies.py) only arranges these; the numbers come from the engine
(``Workbench.study_summary``, engine/studies.py, engine/comparisons.py), so what the page
shows, the CSV, the JSON and the HTML report say the same.
"""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from engine.comparisons import read_study
from engine.errors import NotFoundError, SettingsError, WorkbenchError
from engine.settings import load_config
from engine.studies import Grid, parse_axes, parse_list
from engine.study_merge import merge_summaries, part_names, read_summary
from ui.confirm import delete_button, flash
from ui.forms import bounded_number, fix_buttons
from ui.state import format_duration, linked_selectbox, md_text
from ui.study_results import cells_view, exports, study_csv

DEFAULT_METHODS = ["qlora", "lora"]


# ---------------------------------------------------------------------- launch
def launch_form(wb) -> int | None:
    """The form that launches a grid, with how many runs it makes and how long they take;
    returns the new study's id when the user launched one."""
    datasets = {d["name"]: d for d in wb.list_datasets()}
    if not datasets:
        st.info("Add a dataset first (**Datasets** page, or *Add the demo* on Home).")
        return None
    left, right = st.columns(2)
    dataset = left.selectbox("Dataset", list(datasets), key="studies.dataset")
    task = datasets[dataset]["task"]
    models = [m["name"] for m in wb.list_models() if task in (m["tasks"] or [])]
    if not models:
        right.warning("No registered model can train on this dataset's task.")
        return None
    model = right.selectbox("Model", models, key="studies.model")
    names = [m["name"] for m in wb.list_methods()]
    methods = st.multiselect("Methods", names, default=[m for m in DEFAULT_METHODS if m in names],
                             key="studies.methods", help="Every method is one row of the grid.")
    a, b, c = st.columns(3)
    ranks = a.text_input("Ranks (r)", "4, 8", key="studies.ranks",
                         help="Comma-separated ranks, for methods that have one (LoRA, QLoRA, …).")
    budgets = b.text_input("Parameter budgets", "", key="studies.budgets",
                           help="Comma-separated budgets, for methods sized by a budget of "
                                "trainable parameters; empty: their default.")
    seeds = c.text_input("Seeds", "1, 2, 3", key="studies.seeds",
                         help="Each cell trains once per seed; the table shows mean ± std "
                              "over seeds. Two or more seeds are needed to tell a difference "
                              "from seed noise.")
    targets = st.text_area("Target sets (one per line; empty: the model family's default)", "",
                           key="studies.targets", height=68,
                           help="Comma-separated layer names per line, e.g. q_proj,v_proj")
    a, b, c = st.columns(3)
    steps = bounded_number("Steps per run", 1, 1_000_000, 50, "studies.steps", a)
    learning_rates = b.text_input("Learning rates", "1e-3", key="studies.lr",
                                  help="One value for every run, or several (comma-separated, e.g. "
                                       "1e-4, 3e-4, 1e-3) to make the learning rate a grid axis: "
                                       "methods rarely share their best one.")
    batch = bounded_number("Batch size", 1, 1024, 8, "studies.batch", c)
    axes_text = st.text_area("More grid axes (KEY=V1,V2, one per line)", "", key="studies.axes", height=68,
                             help="Any training or method setting and its values, e.g. "
                                  "warmup_steps=0,10 or lora_dropout=0,0.1: every cell is run at each "
                                  "value (a method without that setting at its default).")
    tune = st.checkbox("Tune per method", key="studies.tune",
                       help="Read the study per method: each method's best cell over the grid axes, "
                            "chosen on the validation split (mean over seeds), compared with the "
                            "reference's on the test split. Needs a validation split.")
    extra = st.text_area("More settings for every run (key=value, one per line)", "",
                         key="studies.extra", height=68,
                         help="Any training setting, or a method setting (given to every "
                              "method that has it), e.g. lora_alpha=16")
    name = st.text_input("Name (optional)", "", key="studies.name", max_chars=80)
    ray_address = ray_choice(wb)
    try:
        rates = parse_list(learning_rates, "learning rates", float)
        axes = grid_axes(rates, axes_text)
        grid = Grid(methods=methods, ranks=parse_list(ranks, "ranks"),
                    budgets=parse_list(budgets, "budgets"),
                    target_sets=[line.strip() for line in targets.splitlines() if line.strip()] or [""],
                    seeds=parse_list(seeds, "seeds"), axes=axes, tune_per_method=tune)
        settings = {"max_steps": int(steps), "per_device_train_batch_size": int(batch),
                    **({"learning_rate": rates[0]} if len(rates) == 1 else {}), **extra_settings(extra)}
        plan = wb.plan_study(dataset, model, grid, settings)
    except WorkbenchError as error:
        st.error(str(error), icon=":material/error:")
        # (learning rates are a text box: several make a grid axis, so no one-click number)
        fix_buttons(error, {"max_steps": "studies.steps", "per_device_train_batch_size": "studies.batch"},
                    "studies.fix")
        return None
    st.info(estimate_text(plan), icon=":material/calculate:")
    for warning in plan["warnings"]:
        st.warning(warning)
    if st.button("Launch study", type="primary", icon=":material/play_arrow:", key="studies.launch"):
        try:
            if ray_address:
                wb.check_ray_address(ray_address)  # before anything is queued
            study_id = wb.submit_study(dataset, model, grid, settings, name)
            if ray_address:  # the driver is a process of its own: the page returns at once
                log = wb.launch_study_on_ray(study_id, ray_address)
                flash("studies", f"Study {study_id}: its runs go to the Ray cluster at "
                      f"{ray_address}; the driver's log is {log}.")
            return study_id
        except WorkbenchError as error:
            st.error(str(error))
    return None


def ray_choice(wb) -> str:
    """Where the study's runs train: this machine (the queue), or a Ray cluster's address.
    Only shown to those who may (with accounts on: admins; an address reaches other machines)."""
    if not wb.ray_allowed():
        return ""
    where = st.radio("Run on", ["this machine", "a Ray cluster"], horizontal=True, key="studies.where",
                     help="A Ray cluster trains the runs side by side on its machines, each run one "
                          "Ray task; every machine must mount this data home at the same path "
                          "(docs/multi-gpu.md).")
    if where == "this machine":
        return ""
    if not wb.ray_available():
        st.warning("Ray is not installed here: pip install ray==2.60.0", icon=":material/warning:")
    return st.text_input("Ray address", "", key="studies.ray", max_chars=200, placeholder="node0:6379 or local",
                         help="The cluster's head, host:port (`ray start --head` prints it), or "
                              "local for a Ray of this machine. Empty: this machine.").strip()


def grid_axes(learning_rates: list[float], text: str) -> dict[str, list]:
    """The form's grid axes: the learning rates when there are several, and each
    ``KEY=V1,V2`` line."""
    axes: dict[str, list] = parse_axes([line.strip() for line in text.splitlines() if line.strip()])
    if len(learning_rates) > 1:
        if "learning_rate" in axes:
            raise SettingsError("learning_rate is given twice: in Learning rates and as a grid axis; keep one")
        axes = {"learning_rate": learning_rates, **axes}
    elif not learning_rates:
        raise SettingsError("learning rates: give one value, or several for a grid axis")
    return axes


def extra_settings(text: str) -> dict:
    from engine.settings import parse_assignments

    return parse_assignments([line.strip() for line in text.splitlines() if line.strip()])


def estimate_text(plan: dict) -> str:
    """``8 runs (4 cells × 2 seeds), 400 steps in all · about 12m 00s``, saying which runs
    have no estimate (their model and method never trained on this machine)."""
    cells = plan["cells_without_seeds"]
    seeds = plan["runs"] // max(1, cells)
    text = (f"{plan['runs']} runs ({cells} cell{'s' if cells != 1 else ''} × {seeds} "
            f"seed{'s' if seeds != 1 else ''}), {plan['steps']:,} steps in all · ")
    if plan["estimated_seconds"] is None:
        return text + ("time unknown: none of these methods has trained this model on this "
                       "machine yet (the first run gives the estimate).")
    text += (f"about {format_duration(plan['estimated_seconds']).removeprefix('about ')} one after "
             "another (from earlier runs of these models and methods here: their steps, plus the "
             "loading, scoring and saving around them)")
    if plan["unestimated"]:
        text += f", not counting {plan['unestimated']} runs of methods not yet timed here"
    return text + "."


def progress(summary: dict) -> None:
    """Runs ended / total, steps, and each run's status."""
    total = max(1, summary["runs_total"])
    counts = ", ".join(f"{n} {status}" for status, n in summary["status_counts"].items())
    st.progress(summary["runs_ended"] / total,
                text=f"{summary['runs_ended']} of {summary['runs_total']} runs ended ({counts}) · "
                     f"{summary['steps_done']:,} of {summary['steps_total']:,} steps")
    with st.expander("Runs", icon=":material/list:"):
        st.dataframe(pd.DataFrame([{"run": f"#{r['id']}", "cell": r["cell"], "seed": r["seed"],
                                    "status": r["status"], "step": f"{r['step']}/{r['total_steps'] or '–'}",
                                    "error": r["error"] or ""} for r in summary["runs"]]),
                     hide_index=True, width="stretch")


# ---------------------------------------------------------------------- one study
def choose_study(wb, studies: list[dict]) -> int:
    """The study to show (the one just launched, else the one a link names, ``?study=2``, else
    the one chosen before, else the newest)."""
    by_id = {s["id"]: s for s in studies}
    if st.session_state.get("studies.chosen") not in by_id:
        st.session_state["studies.chosen"] = studies[0]["id"]
    return linked_selectbox(
        "study", "Study", list(by_id), key="studies.chosen", noun="Study", parse=int,
        format_func=lambda i: f"#{i} {by_id[i]['name']} ({by_id[i]['status']})"
        + ("" if by_id[i]["owner_id"] == wb.owner_id else f" · {by_id[i]['owner']}'s"))


@st.fragment(run_every=2)
def live_progress(wb, study_id: int, shown_status: str, shown_ended: int) -> None:
    """While the study trains: how far it is; the whole page follows when a run ends (the
    table gains its result) and when the study ends."""
    try:
        now = wb.study_progress(study_id)
    except NotFoundError:  # deleted from the command line
        st.rerun()
    if (now["status"], now["runs_ended"]) != (shown_status, shown_ended):
        st.rerun()
    progress(now)


def actions(wb, summary: dict) -> None:
    """Stop a study that trains (owner or admin), delete one that ended (owner, after asking)."""
    mine = summary["owner_id"] == wb.owner_id
    if not mine:
        whose = "Shared by" if summary["shared"] else "Owned by"
        stoppable = wb.see_all and summary["status"] in ("queued", "running")
        st.caption(f"{whose} **{md_text(summary['owner'])}**: read-only here"
                   + (" (as an admin you may stop it: the device is everybody's)." if stoppable else "."))
    if summary["status"] in ("queued", "running"):
        if not (mine or wb.see_all):
            return
        if st.button("Stop study", icon=":material/stop_circle:", key="studies.stop",
                     help="Cancel its queued runs; its running run stops at the next step "
                          "with a checkpoint."):
            outcome = wb.stop_study(summary["id"])
            flash("studies", f"Study {summary['id']}: {outcome['cancelled']} runs cancelled, "
                             f"{outcome['stopping']} stopping.")
            st.rerun()
        return
    if not mine:
        return
    study_id = summary["id"]
    delete_button("studies.delete", study_id,
                  f"Delete study #{study_id} and its {summary['runs_total']} runs with their "
                  "metrics, checkpoints and adapters? This cannot be undone.",
                  lambda: wb.delete_study(study_id), label="Delete study…",
                  help="Delete the study and all its runs.", yes="Yes, delete them", page="studies",
                  done=lambda removed: f"Study {study_id} deleted with {len(removed)} runs.")


def results(wb, summary: dict) -> None:
    """A stored study's table, comparisons and charts (``cells_view``), with its exports."""
    study_id = summary["id"]
    shown = cells_view(summary, lambda reference, tune: wb.study_summary(study_id, reference, tune))
    if shown is not None:
        exports(wb, shown)


# ---------------------------------------------------------------------- merge
def merge_parts(files: list[tuple[str, bytes]]) -> dict:
    """The merged study of uploaded parts, each (file name, bytes) of a ``study show --json``:
    what ``study merge`` prints with ``--json``; a ``SettingsError`` naming the file otherwise."""
    summaries = [read_summary(data, name) for name, data in files]
    return merge_summaries(summaries, part_names([name for name, _ in files]))


def merge_section() -> None:
    """Upload the parts of one grid run on several machines (or data homes) and read them as one
    study: the same table, comparisons and charts as a stored study, and the merged JSON.
    Nothing is stored: the merge is a view of the files."""
    uploads = st.file_uploader(
        "Parts of one grid: each machine's `study show ID --json` output", type=["json"],
        accept_multiple_files=True, key="studies.merge.files", max_upload_size=load_config().max_upload_mb,
        help="The same dataset, model and settings on every machine, a seed (or a few methods) "
             "each. Nothing is stored: the merge is read from the files each time.")
    if len(uploads or []) < 2:
        st.info("Upload two or more study summaries (`python -m engine study show ID --json > "
                "part.json` on each machine) to see them as one study.", icon=":material/merge:")
        return
    try:
        merged = merge_parts([(upload.name, upload.getvalue()) for upload in uploads])
    except WorkbenchError as error:
        st.error(str(error), icon=":material/error:")
        return
    counts = ", ".join(f"{n} {md_text(status)}" for status, n in merged["status_counts"].items())
    st.markdown(f"**{md_text(merged['name'])}**: {merged['status']} · {merged['runs_ended']} of "
                f"{merged['runs_total']} runs ended ({counts})")
    st.caption(f"{md_text(merged['model'])} on {md_text(merged['dataset'])} · run ids are "
               "FILE#ID")
    if merged["missing"]:
        st.warning("In no part: " + ", ".join(f"{md_text(m['cell'])} seed {m['seed']}" for m in merged["missing"])
                   + ". Run them somewhere and add that part.", icon=":material/warning:")
    if merged["replaced"]:
        st.caption("Left out (the seed's run in another part counts): "
                   + ", ".join(f"{md_text(r['run'])} ({md_text(r['status'])})" for r in merged["replaced"]))
    results = {run["id"]: run["results"] for run in merged["runs"]}
    shown = cells_view(merged, lambda reference, tune: read_study(merged["table"], results, reference, tune),
                       "studies.merge")
    if shown is None:
        return
    left, right = st.columns(2)  # the downloads say what the page shows
    left.download_button("Table as CSV", study_csv(merged["table"], merged["runs"]), file_name="study-merged.csv",
                         mime="text/csv", icon=":material/table:", key="studies.merge.csv",
                         on_click="ignore")
    right.download_button("Merged study (JSON)", json.dumps(shown, indent=2, default=str),
                          file_name="study-merged.json", mime="application/json", icon=":material/download:",
                          key="studies.merge.json", on_click="ignore",
                          help="What `python -m engine study merge FILES --reference CELL --json` prints.")
