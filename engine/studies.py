"""Studies: a grid of ordinary runs (methods x ranks or budgets x target sets x seeds) on one
dataset and model, and what its results say.

Pure functions of plain values (no storage, no torch, no streamlit), shared by the facade
(``Workbench.submit_study``, ``study_summary``), the Studies page and the tests:

- ``Grid`` and ``grid_cells``: the runs a grid makes, seeds outermost, so every cell has a
  first result before any cell gets its second seed.
- ``study_table``: one row per cell (a method at one size and target set) with the mean and
  the sample standard deviation over its seeds of the final metric, peak memory, trainable
  parameters, wall time and samples/s.
- ``differences``: which cells differ from a reference cell by more than seed noise, decided
  with Welch's t-test (scipy) at ``ALPHA``.
- ``pareto_front``: the cells no other cell beats on both quality and cost.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import warnings
from dataclasses import dataclass, field
from typing import Any

from engine.errors import SettingsError
from engine.metrics import METRIC_DIRECTION

ALPHA = 0.05  # a difference is "larger than seed noise" when Welch's t-test gives p < ALPHA
MAX_RUNS = 400  # a grid larger than this is almost certainly a typo (one run at a time)
# Row columns averaged over a cell's seeds (engine.compare rows carry them).
MEASURES = ["final_metric", "peak_memory_mb", "trainable_params", "wall_time_s", "samples_per_second"]
ENDED = ("completed", "failed", "stopped", "interrupted", "cancelled")
STATISTIC_TEXT = (
    f"Welch's t-test (scipy.stats.ttest_ind, unequal variances) on the final metric of each "
    f"seed: a difference counts as larger than seed noise when p < {ALPHA}. It needs at least "
    "two completed seeds in both cells; with few seeds it finds only large differences.")


@dataclass
class Grid:
    """What a study varies. ``ranks`` set a method's ``r``; ``budgets`` set the setting a method
    names as its parameter budget (``Method.extra["budget_setting"]``); a method with neither
    gets one size, its default. ``target_sets``: comma-separated layer names each ("" = the
    model family's default), for methods with ``target_modules``."""

    methods: list[str]
    ranks: list[int] = field(default_factory=list)
    budgets: list[int] = field(default_factory=list)
    target_sets: list[str] = field(default_factory=lambda: [""])
    seeds: list[int] = field(default_factory=lambda: [42])

    def check(self) -> None:
        if not self.methods:
            raise SettingsError("a study needs at least one method")
        if not self.seeds:
            raise SettingsError("a study needs at least one seed")
        for name, values in (("ranks", self.ranks), ("budgets", self.budgets), ("seeds", self.seeds)):
            low = 0 if name == "seeds" else 1
            bad = [v for v in values if not isinstance(v, int) or v < low]
            if bad:
                raise SettingsError(f"{name}: {bad[0]!r} is not a whole number of {low} or more")
        for name, values in (("methods", self.methods), ("ranks", self.ranks),
                             ("budgets", self.budgets), ("target sets", self.target_sets),
                             ("seeds", self.seeds)):
            if len(set(values)) != len(values):
                raise SettingsError(f"{name}: a value appears twice")

    def as_dict(self) -> dict:
        return {"methods": self.methods, "ranks": self.ranks, "budgets": self.budgets,
                "target_sets": self.target_sets, "seeds": self.seeds}


def parse_list(text: str | list | None, what: str, kind: type = int) -> list:
    """``"4, 8"`` -> ``[4, 8]`` (a list is taken as it is); a clear error for anything else."""
    if text is None:
        return []
    if isinstance(text, (list, tuple)):
        return list(text)
    values = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            values.append(kind(part))
        except ValueError:
            raise SettingsError(f"{what}: {part!r} is not {'a whole number' if kind is int else 'valid'}; "
                                f"give a comma-separated list such as 4,8") from None
    return values


def size_setting(method: Any, grid: Grid) -> tuple[str | None, list]:
    """The setting a grid's sizes go to for ``method`` (a registered ``Method``) and its values:
    the method's budget setting with ``grid.budgets``, else ``r`` with ``grid.ranks``, else
    ``(None, [None])``: one cell at the method's default size."""
    fields = {f.name for f in dataclasses.fields(method.settings_cls)}
    budget = (method.extra or {}).get("budget_setting")
    if budget and budget in fields and grid.budgets:
        return budget, list(grid.budgets)
    if "r" in fields and grid.ranks:
        return "r", list(grid.ranks)
    return None, [None]


def grid_cells(grid: Grid, methods: dict[str, Any]) -> list[dict]:
    """Every run of the grid as a cell dict (method, size_setting, size, targets, seed), seeds
    outermost. ``methods``: name -> registered ``Method``. Axes a method has no setting for
    collapse to one value, so LoRA x 2 ranks beside IA3 makes 2 + 1 cells, not 2 + 2."""
    grid.check()
    cells = []
    for seed in grid.seeds:
        for name in grid.methods:
            method = methods[name]
            setting, sizes = size_setting(method, grid)
            has_targets = "target_modules" in {f.name for f in dataclasses.fields(method.settings_cls)}
            target_sets = grid.target_sets if has_targets and grid.target_sets else [""]
            for size in sizes:
                for targets in target_sets:
                    cells.append({"method": name, "size_setting": setting, "size": size,
                                  "targets": targets, "seed": seed})
    if len(cells) > MAX_RUNS:
        raise SettingsError(f"this grid makes {len(cells)} runs; at most {MAX_RUNS} in one study")
    return cells


def cell_key(cell: dict) -> tuple:
    """A cell without its seed: the runs that share it are its seeds."""
    return (cell["method"], cell.get("size_setting"), cell.get("size"), cell.get("targets") or "")


def cell_label(cell: dict) -> str:
    parts = [cell["method"]]
    if cell.get("size_setting"):
        parts.append(f"{cell['size_setting']}={cell['size']}")
    if cell.get("targets"):
        parts.append(cell["targets"])
    return " · ".join(parts)


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); std is None below two values."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def study_table(runs: list[dict], rows: dict[int, dict]) -> list[dict]:
    """One row per cell, in grid order. ``runs``: the study's run records (``study_cell`` and
    ``status``); ``rows``: run id -> its ``engine.compare.comparison_row``. Means and standard
    deviations are over the cell's completed runs only."""
    cells: dict[tuple, dict] = {}
    for run in runs:
        cell = run["study_cell"]
        entry = cells.setdefault(cell_key(cell), {
            "cell": cell_label(cell), "method": cell["method"], "size_setting": cell.get("size_setting"),
            "size": cell.get("size"), "targets": cell.get("targets") or "", "runs": [],
            "seeds": 0, "completed": 0, "status": {}, "metric": None, "values": []})
        entry["runs"].append(run["id"])
        entry["seeds"] += 1
        entry["status"][run["status"]] = entry["status"].get(run["status"], 0) + 1
    for entry in cells.values():
        done = [rows[i] for i in entry["runs"] if rows[i]["status"] == "completed"]
        entry["completed"] = len(done)
        entry["metric"] = next((r["metric"] for r in done if r.get("metric")), None)
        entry["values"] = [r["final_metric"] for r in done if r.get("final_metric") is not None]
        for measure in MEASURES:
            values = [float(r[measure]) for r in done if r.get(measure) is not None]
            entry[f"{measure}_mean"], entry[f"{measure}_std"] = mean_std(values)
    return list(cells.values())


def welch(a: list[float], b: list[float]) -> float | None:
    """Welch's t-test p-value for two samples of seeds (None below two values in either).
    Two cells whose seeds all gave one identical value each: p = 0 when the values differ,
    None (no difference to test) when they are equal."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    with warnings.catch_warnings():  # identical values warn of precision loss; handled below
        warnings.simplefilter("ignore", RuntimeWarning)
        p_value = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return None if math.isnan(p_value) else p_value


def differences(table: list[dict], reference: str, alpha: float = ALPHA) -> list[dict]:
    """Every other cell against the ``reference`` cell (its label): the difference of mean
    final metrics, Welch's p-value, and whether it is larger than seed noise (``significant``:
    True, False, or None when it cannot be decided) and ``better`` (by the metric's direction)."""
    by_label = {row["cell"]: row for row in table}
    if reference not in by_label:
        raise SettingsError(f"no cell {reference!r} in this study")
    ref = by_label[reference]
    out = []
    for row in table:
        if row["cell"] == reference:
            continue
        result = {"cell": row["cell"], "reference": reference, "metric": row["metric"] or ref["metric"],
                  "difference": None, "p_value": None, "significant": None, "better": None}
        if row["final_metric_mean"] is None or ref["final_metric_mean"] is None:
            result["verdict"] = "no completed runs to compare yet"
            out.append(result)
            continue
        result["difference"] = row["final_metric_mean"] - ref["final_metric_mean"]
        higher = METRIC_DIRECTION.get(result["metric"] or "", True)
        result["better"] = (result["difference"] > 0) == higher if result["difference"] else None
        p_value = welch(row["values"], ref["values"])
        result["p_value"] = p_value
        if len(row["values"]) < 2 or len(ref["values"]) < 2:
            result["verdict"] = "undecided: needs two or more completed seeds in both cells"
        elif p_value is None:
            result["significant"] = False
            result["verdict"] = "no difference (every seed gave the same value)"
        else:
            result["significant"] = p_value < alpha
            word = "better" if result["better"] else "worse"
            result["verdict"] = (f"{word}, larger than seed noise" if result["significant"]
                                 else "within seed noise")
        out.append(result)
    return out


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points (cost, quality) that no other point dominates: none is at most as
    costly and at least as good, and strictly one of the two."""
    def better_or_equal(q1: float, q2: float) -> bool:
        return q1 >= q2 if higher_is_better else q1 <= q2

    front = []
    for i, (cost, quality) in enumerate(points):
        dominated = any(
            c2 <= cost and better_or_equal(q2, quality) and (c2 < cost or q2 != quality)
            for j, (c2, q2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def study_status(statuses: list[str]) -> str:
    """One word for a study from its runs' statuses."""
    if "running" in statuses:
        return "running"
    if "queued" in statuses:
        return "queued"
    if statuses and all(s == "completed" for s in statuses):
        return "completed"
    return "ended" if statuses else "empty"


def run_results(row: dict) -> dict:
    """What a study's table reads from one run's comparison row (its status, metric and
    ``MEASURES``): kept with each run in ``study show --json`` so split grids can merge."""
    return {key: row.get(key) for key in ("status", "metric", *MEASURES)}


def read_summary(data: bytes | str, name: str) -> dict:
    """A ``study show --json`` file's text as a dict, or a clear error naming ``name`` (the
    command line's files and the Studies page's uploads read parts so)."""
    import json

    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SettingsError(f"{name}: not a study's JSON ({error}); write one with: "
                            "study show ID --json > FILE") from None


def part_names(files: list[str]) -> list[str]:
    """Short names for the parts of a merge (run ids become ``NAME#ID``): each file's stem,
    numbered from the second on where two files share one (two machines' ``study.json``)."""
    from pathlib import PurePath

    names: list[str] = []
    for stem in (PurePath(str(f).replace("\\", "/")).stem or "part" for f in files):
        name, number = stem, 1
        while name in names:
            number += 1
            name = f"{stem}-{number}"
        names.append(name)
    return names


def merge_summaries(summaries: list[dict], names: list[str], reference: str | None = None) -> dict:
    """One study out of several ``study show --json`` summaries of one grid split over
    machines or data homes (a seed or a method each, say): the same dataset, model and
    settings; a cell's seed completed once (a part cut short may be run again elsewhere).
    The table and the differences are computed from every run's own results exactly as for a
    single study (``study_table``, ``differences``); run ids become ``NAME#ID`` (ids of
    different homes collide). ``status`` says what the merged grid holds: "completed" when
    every cell's every seed has a completed run in some part, "partial" when some cell's seed is
    in no part (listed in ``missing``), else ``study_status`` of the runs kept."""
    if len(summaries) < 2:
        raise SettingsError("merging needs two or more study summaries")
    first = summaries[0]
    for name, summary in zip(names, summaries):
        if not isinstance(summary, dict) or not {"runs", "dataset", "model", "settings"} <= set(summary):
            raise SettingsError(f"{name}: not a study summary (write one with: study show ID --json)")
        if not isinstance(summary["runs"], list) or not all(isinstance(run, dict) for run in summary["runs"]):
            raise SettingsError(f"{name}: not a study summary (its runs are not a list of runs)")
        if any("results" not in run or "study_cell" not in run for run in summary["runs"]):
            raise SettingsError(f"{name}: its runs carry no results (written by an older version); "
                                "write it again with: study show ID --json")
        if not all(is_run_record(run) for run in summary["runs"]):
            raise SettingsError(f"{name}: not a study summary (a run's id, status, cell or results are "
                                "missing or malformed); write one with: study show ID --json")
        grid = summary.get("grid") or {}
        if not isinstance(grid, dict) or not all(
                isinstance(values, list) and all(isinstance(v, (str, int, float)) for v in values)
                for values in grid.values()):
            raise SettingsError(f"{name}: not a study summary (its grid is not lists of values)")
        for key in ("dataset", "model", "settings"):
            if summary[key] != first[key]:
                raise SettingsError(f"{name}: its {key} ({summary[key]!r}) differ from {names[0]}'s "
                                    f"({first[key]!r}); only the parts of one grid merge")
    # A cell's seed may appear in several parts when a part was cut short and run again
    # elsewhere: one run stands for it (``KEEP_ORDER``: the completed one, else one still
    # coming, so the result does not depend on the files' order) and the others are left out
    # (``replaced``); two completed runs of one seed are refused (which one counts would be
    # a choice).
    chosen: dict[tuple, dict] = {}
    replaced = []
    for name, summary in zip(names, summaries):
        for run in summary["runs"]:
            entry = {"id": f"{name}#{run['id']}", "status": run["status"],
                     "study_cell": run["study_cell"], "results": run["results"]}
            seed = (cell_key(run["study_cell"]), run["study_cell"].get("seed"))
            before = chosen.get(seed)
            if before is None:
                chosen[seed] = entry
                continue
            if before["status"] == entry["status"] == "completed":
                raise SettingsError(f"{cell_label(run['study_cell'])} seed {seed[1]} completed in both "
                                    f"{before['id']} and {entry['id']}; merge each seed of a cell once")
            keep, drop = (entry, before) if keep_rank(entry) < keep_rank(before) else (before, entry)
            chosen[seed] = keep
            replaced.append({"run": drop["id"], "status": drop["status"], "by": keep["id"]})
    runs = list(chosen.values())
    table = study_table(runs, {run["id"]: run["results"] for run in runs})
    reference = reference or (table[0]["cell"] if table else None)
    grid = {axis: list(dict.fromkeys(v for s in summaries for v in (s.get("grid") or {}).get(axis, [])))
            for axis in ("methods", "ranks", "budgets", "target_sets", "seeds")}
    # A grid runs every cell once per seed: a cell's seed that no part holds is missing, and
    # the cell's row counts it as planned (as a single study's row counts its queued seeds).
    seeds = list(dict.fromkeys([*grid["seeds"], *(key[1] for key in chosen)]))
    labels = {key: cell_label(run["study_cell"]) for (key, _), run in chosen.items()}
    missing = [{"cell": label, "seed": s} for key, label in labels.items() for s in seeds
               if (key, s) not in chosen]
    for row in table:
        row["seeds"] = len(seeds)
    statuses = [run["status"] for run in runs]
    return {"id": "merged", "name": " + ".join(str(s.get("name", n)) for n, s in zip(names, summaries)),
            "merged_from": names, "dataset": first["dataset"], "model": first["model"], "grid": grid,
            "settings": first["settings"], "status": merged_status(statuses, missing),
            "runs_total": len(runs), "runs_ended": sum(status in ENDED for status in statuses),
            "status_counts": {s: statuses.count(s) for s in dict.fromkeys(statuses)},
            "runs": runs, "replaced": replaced, "missing": missing, "table": table,
            "reference": reference, "differences": differences(table, reference) if reference else []}


def is_run_record(run: dict) -> bool:
    """A run of a summary as ``study show --json`` writes it: what the merge reads is there and
    of the kinds it expects (an edited or foreign file is refused, not half-read)."""
    cell, results = run.get("study_cell"), run.get("results")
    text, number = (str, type(None)), (int, float, type(None))
    cell_kinds = {"method": (str,), "size_setting": text, "size": (*number, str), "targets": text, "seed": number}
    result_kinds = {"status": text, "metric": text, **{measure: number for measure in MEASURES}}
    return (isinstance(run.get("id"), (int, str)) and isinstance(run.get("status"), str)
            and isinstance(cell, dict) and isinstance(results, dict)
            and all(key in cell and isinstance(cell[key], kinds) for key, kinds in cell_kinds.items())
            and all(key in results and isinstance(results[key], kinds) for key, kinds in result_kinds.items())
            and all(results[key] is None or math.isfinite(results[key]) for key in MEASURES))


KEEP_ORDER = ("completed", "running", "queued")  # which run of a seed a merge keeps; then the first


def keep_rank(run: dict) -> int:
    return KEEP_ORDER.index(run["status"]) if run["status"] in KEEP_ORDER else len(KEEP_ORDER)


def merged_status(statuses: list[str], missing: list[dict]) -> str:
    """``study_status`` of the runs a merge kept, as its parts were saved ("running" or
    "queued" while one part still trains or waits), and "partial" when every kept run has
    ended but some cell's seed is in no part."""
    status = study_status(statuses)
    return "partial" if missing and status not in ("running", "queued") else status
