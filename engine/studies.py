"""Studies: a grid of ordinary runs (methods x ranks or budgets x target sets x any other
setting's values x seeds) on one dataset and model, and its table.

Pure functions of plain values (no storage, no torch, no streamlit), shared by the facade
(``Workbench.submit_study``, ``study_summary``), the Studies page and the tests:

- ``Grid`` and ``grid_cells``: the runs a grid makes, seeds outermost, so every cell has a
  first result before any cell gets its second seed. ``axes`` make any run setting a grid
  axis (``--grid learning_rate=1e-4,3e-4``); ``parse_axes`` reads them.
- ``study_table``: one row per cell (a method at one size, target set and axes values) with
  the mean and the sample standard deviation over its seeds of the final (test) metric, the
  validation metric, peak memory, trainable parameters, wall time and samples/s.
- ``pareto_front``: the cells no other cell beats on both quality and cost.
- ``study_provenance``: what the runs recorded about code, libraries, device and data.

What the results say (paired tests, tuning per method, Holm, the power line) is
``engine.comparisons``; merging the ``study show --json`` parts of one grid is
``engine.study_merge``.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
from dataclasses import dataclass, field
from typing import Any

from engine.errors import SettingsError

MAX_RUNS = 400  # a grid larger than this is almost certainly a typo (one run at a time)
# Row columns averaged over a cell's seeds (engine.compare rows carry them, and
# ``validation_metric``: the run's last validation score of its headline metric).
MEASURES = ["final_metric", "validation_metric", "peak_memory_mb", "trainable_params", "wall_time_s",
            "samples_per_second"]
ENDED = ("completed", "failed", "stopped", "interrupted", "cancelled")
# Settings a grid axis may not vary: the grid has its own way (--seeds).
AXIS_REFUSED = {"seed": "seeds"}


@dataclass
class Grid:
    """What a study varies. ``ranks`` set a method's ``r``; ``budgets`` set the setting a method
    names as its parameter budget (``Method.extra["budget_setting"]``); a method with neither
    gets one size, its default. ``target_sets``: comma-separated layer names each ("" = the
    model family's default), for methods with ``target_modules``. ``axes``: any other run
    setting (training or method) -> its values, e.g. ``{"learning_rate": [1e-4, 3e-4]}``; a
    method without that setting gets one value, its default. ``tune_per_method``: read the
    study per method, each at its best cell on the validation split (engine/comparisons.py)."""

    methods: list[str]
    ranks: list[int] = field(default_factory=list)
    budgets: list[int] = field(default_factory=list)
    target_sets: list[str] = field(default_factory=lambda: [""])
    seeds: list[int] = field(default_factory=lambda: [42])
    axes: dict[str, list] = field(default_factory=dict)
    tune_per_method: bool = False

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
                             ("seeds", self.seeds), *((f"--grid {k}", v) for k, v in self.axes.items())):
            if len(set(map(repr, values))) != len(values):
                raise SettingsError(f"{name}: a value appears twice")
        for key, values in self.axes.items():
            if key in AXIS_REFUSED:
                raise SettingsError(f"--grid {key}: {key} comes from the study's {AXIS_REFUSED[key]}")
            if not values:
                raise SettingsError(f"--grid {key}: give one value or more, e.g. {key}=A,B")

    def as_dict(self) -> dict:
        return {"methods": self.methods, "ranks": self.ranks, "budgets": self.budgets,
                "target_sets": self.target_sets, "seeds": self.seeds, "axes": self.axes,
                "tune_per_method": self.tune_per_method}


def parse_axes(pairs: list[str]) -> dict[str, list[str]]:
    """``["learning_rate=1e-4,3e-4", "warmup_steps=0,5"]`` -> ``{"learning_rate": ["1e-4",
    "3e-4"], "warmup_steps": ["0", "5"]}``: values as text, converted and checked against the
    run settings by ``Workbench.plan_study`` (a bad key or value names it)."""
    axes: dict[str, list[str]] = {}
    for pair in pairs:
        key, sep, text = (part.strip() for part in pair.partition("="))
        if not sep or not key:
            raise SettingsError(f"--grid expects KEY=V1,V2 (a setting and its values), got {pair!r}")
        if key in axes:
            raise SettingsError(f"--grid {key} is given twice; list all its values once: {key}=V1,V2")
        values = [value.strip() for value in text.split(",") if value.strip()]
        if not values:
            raise SettingsError(f"--grid {key}: no values; give them as {key}=V1,V2")
        axes[key] = values
    return axes


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


def grid_cells(grid: Grid, methods: dict[str, Any], training_fields: set[str] = frozenset()) -> list[dict]:
    """Every run of the grid as a cell dict (method, size_setting, size, targets, axes, seed),
    seeds outermost. ``methods``: name -> registered ``Method``; ``training_fields``: the
    training settings' names (an axis over one applies to every method). Axes a method has no
    setting for collapse to one value, so LoRA x 2 ranks beside IA3 makes 2 + 1 cells, not 2 + 2."""
    grid.check()
    cells = []
    for seed in grid.seeds:
        for name in grid.methods:
            method = methods[name]
            fields = {f.name for f in dataclasses.fields(method.settings_cls)}
            setting, sizes = size_setting(method, grid)
            target_sets = grid.target_sets if "target_modules" in fields and grid.target_sets else [""]
            keys = [key for key in grid.axes if key in fields or key in training_fields]
            for size, targets, values in itertools.product(
                    sizes, target_sets, itertools.product(*(grid.axes[key] for key in keys))):
                cells.append({"method": name, "size_setting": setting, "size": size, "targets": targets,
                              "axes": dict(zip(keys, values)), "seed": seed})
    if len(cells) > MAX_RUNS:
        raise SettingsError(f"this grid makes {len(cells)} runs; at most {MAX_RUNS} in one study")
    return cells


def cell_key(cell: dict) -> tuple:
    """A cell without its seed: the runs that share it are its seeds."""
    return (*group_key(cell), tuple((cell.get("axes") or {}).items()))


def group_key(cell: dict) -> tuple:
    """A cell without its seed and its axes: one method at one size and target set, whose
    cells tuning per method chooses between."""
    return (cell["method"], cell.get("size_setting"), cell.get("size"), cell.get("targets") or "")


def group_label(cell: dict) -> str:
    parts = [cell["method"]]
    if cell.get("size_setting"):
        parts.append(f"{cell['size_setting']}={cell['size']}")
    if cell.get("targets"):
        parts.append(cell["targets"])
    return " · ".join(parts)


def cell_label(cell: dict) -> str:
    axes = " · ".join(f"{key}={axis_text(value)}" for key, value in (cell.get("axes") or {}).items())
    return group_label(cell) + (f" · {axes}" if axes else "")


def axis_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); std is None below two values."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def study_table(runs: list[dict], rows: dict[int, dict]) -> list[dict]:
    """One row per cell, in grid order. ``runs``: the study's run records (``study_cell`` and
    ``status``); ``rows``: run id -> its results (``run_results``). Means and standard
    deviations are over the cell's completed runs only; ``seed_runs`` pairs each completed
    seed with its run, ``group`` names the cell without its axes (a method at one size)."""
    cells: dict[tuple, dict] = {}
    for run in runs:
        cell = run["study_cell"]
        entry = cells.setdefault(cell_key(cell), {
            "cell": cell_label(cell), "group": group_label(cell), "method": cell["method"],
            "size_setting": cell.get("size_setting"), "size": cell.get("size"),
            "targets": cell.get("targets") or "", "axes": cell.get("axes") or {}, "runs": [],
            "seeds": 0, "completed": 0, "status": {}, "metric": None, "values": [], "seed_runs": []})
        entry["runs"].append(run["id"])
        entry["seeds"] += 1
        entry["status"][run["status"]] = entry["status"].get(run["status"], 0) + 1
        if rows[run["id"]]["status"] == "completed":
            entry["seed_runs"].append([cell.get("seed"), run["id"]])
    for entry in cells.values():
        done = [rows[i] for i in entry["runs"] if rows[i]["status"] == "completed"]
        entry["completed"] = len(done)
        entry["metric"] = next((r["metric"] for r in done if r.get("metric")), None)
        entry["values"] = [r["final_metric"] for r in done if r.get("final_metric") is not None]
        for measure in MEASURES:
            values = [float(r[measure]) for r in done if r.get(measure) is not None]
            entry[f"{measure}_mean"], entry[f"{measure}_std"] = mean_std(values)
    return list(cells.values())


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


def run_results(row: dict, validation: float | None = None, items: dict | None = None) -> dict:
    """What a study reads from one run: from its comparison row its status, metric and
    ``MEASURES``; ``validation``: its last validation score of that metric; ``items``: its
    per-item test scores (``engine.training.evaluation.item_scores``). Kept with each run in
    ``study show --json``, so split grids merge and the file alone can be analysed again."""
    return {**{key: row.get(key) for key in ("status", "metric", *MEASURES)},
            "validation_metric": validation, "items": items}


def study_provenance(runs: list[dict]) -> dict:
    """What the study's runs recorded about where their numbers came from (each run's
    ``provenance``): ``commit`` (or ``version``), ``packages``, ``device`` and
    ``data_fingerprint`` as one value when every run agrees, else the list of the different
    values (``differs`` names those keys); ``recorded``: how many runs recorded it."""
    recorded = [run["provenance"] for run in runs if run.get("provenance")]
    keys = ["commit", "dirty", "version", "packages", "device", "data_fingerprint", "model"]
    out: dict[str, Any] = {"recorded": len(recorded), "runs": len(runs), "differs": []}
    for key in keys:
        values = []
        for record in recorded:
            if key in record and record[key] not in values:
                values.append(record[key])
        if len(values) == 1:
            out[key] = values[0]
        elif values:
            out[key], out["differs"] = values, [*out["differs"], key]
    return out
