"""Merging a study's parts: one grid run as several studies (a seed or a few methods each,
on several machines or data homes), each saved with ``study show ID --json``, read as one.

``merge_summaries`` checks that the files are parts of one grid, keeps one run per cell's
seed, and computes the table and the comparisons from every run's own results exactly as
for a single study; ``read_summary`` and ``part_names`` read the files for the command line
(``study merge``) and the Studies page.
"""

from __future__ import annotations

import json
import math
from pathlib import PurePath
from typing import Any

from engine.comparisons import read_study
from engine.errors import SettingsError
from engine.studies import (ENDED, MEASURES, cell_key, cell_label, study_provenance, study_status,
                            study_table)


def read_summary(data: bytes | str, name: str) -> dict:
    """A ``study show --json`` file's text as a dict, or a clear error naming ``name`` (the
    command line's files and the Studies page's uploads read parts so)."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SettingsError(f"{name}: not a study's JSON ({error}); write one with: "
                            "study show ID --json > FILE") from None


def part_names(files: list[str]) -> list[str]:
    """Short names for the parts of a merge (run ids become ``NAME#ID``): each file's stem,
    numbered from the second on where two files share one (two machines' ``study.json``)."""
    names: list[str] = []
    for stem in (PurePath(str(f).replace("\\", "/")).stem or "part" for f in files):
        name, number = stem, 1
        while name in names:
            number += 1
            name = f"{stem}-{number}"
        names.append(name)
    return names


def merge_summaries(summaries: list[dict], names: list[str], reference: str | None = None,
                    tune: bool | None = None) -> dict:
    """One study out of several ``study show --json`` summaries of one grid split over
    machines or data homes (a seed or a method each, say): the same dataset, model and
    settings; a cell's seed completed once (a part cut short may be run again elsewhere).
    The table and the comparisons are computed from every run's own results exactly as for a
    single study (``study_table``, ``engine.comparisons.read_study``; ``tune``: the tuned
    reading, by default when a part's grid asked for it); run ids become ``NAME#ID`` (ids of
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
        if not is_grid_record(summary.get("grid") or {}):
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
            entry = {"id": f"{name}#{run['id']}", "status": run["status"], "study_cell": run["study_cell"],
                     "results": run["results"], "provenance": run.get("provenance"),
                     "decisions": run.get("decisions")}
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
    results = {run["id"]: run["results"] for run in runs}
    table = study_table(runs, results)
    grid = merged_grid([s.get("grid") or {} for s in summaries])
    tune = grid["tune_per_method"] if tune is None else tune
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
            **read_study(table, results, reference, tune), "provenance": study_provenance(runs)}


def merged_grid(grids: list[dict]) -> dict:
    """The grid the parts make together: each list's values in first-seen order, each axis's
    values likewise, tuned when a part was."""
    merged: dict[str, Any] = {
        axis: list(dict.fromkeys(v for grid in grids for v in grid.get(axis, [])))
        for axis in ("methods", "ranks", "budgets", "target_sets", "seeds")}
    merged["axes"] = {}
    for grid in grids:
        for key, values in (grid.get("axes") or {}).items():
            merged["axes"][key] = list(dict.fromkeys([*merged["axes"].get(key, []), *values]))
    merged["tune_per_method"] = any(grid.get("tune_per_method") for grid in grids)
    return merged


def is_grid_record(grid: Any) -> bool:
    """A summary's grid: lists of plain values, ``axes`` a dict of such lists, and
    ``tune_per_method`` a boolean."""
    def plain_list(values: Any) -> bool:
        return isinstance(values, list) and all(isinstance(v, (str, int, float)) for v in values)

    if not isinstance(grid, dict):
        return False
    axes = grid.get("axes", {})
    return (isinstance(axes, dict) and all(plain_list(v) for v in axes.values())
            and isinstance(grid.get("tune_per_method", False), bool)
            and all(plain_list(v) for k, v in grid.items() if k not in ("axes", "tune_per_method")))


def is_run_record(run: dict) -> bool:
    """A run of a summary as ``study show --json`` writes it: what the merge reads is there and
    of the kinds it expects (an edited or foreign file is refused, not half-read)."""
    cell, results = run.get("study_cell"), run.get("results")
    text, number = (str, type(None)), (int, float, type(None))
    cell_kinds = {"method": (str,), "size_setting": text, "size": (*number, str), "targets": text, "seed": number}
    # Measures added later (validation_metric) may be missing from older files: None.
    return (isinstance(run.get("id"), (int, str)) and isinstance(run.get("status"), str)
            and isinstance(cell, dict) and isinstance(results, dict)
            and all(key in cell and isinstance(cell[key], kinds) for key, kinds in cell_kinds.items())
            and isinstance(cell.get("axes", {}), dict)
            and all(isinstance(v, (str, int, float)) for v in (cell.get("axes") or {}).values())
            and all(key in results and isinstance(results[key], text) for key in ("status", "metric"))
            and all(isinstance(results.get(key), number) and (results.get(key) is None or math.isfinite(results[key]))
                    for key in MEASURES)
            and is_items_record(results.get("items")))


def is_items_record(items: Any) -> bool:
    """A run's per-item scores as ``item_scores`` writes them (or None): equal-length lists of
    finite numbers."""
    if items is None:
        return True
    if not isinstance(items, dict) or not isinstance(items.get("split"), str) or not isinstance(
            items.get("metric"), str):
        return False
    columns = [items.get(key) for key in ("positions", "scores", "weights")]
    return (all(isinstance(c, list) for c in columns) and len({len(c) for c in columns}) == 1
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for c in columns for v in c))


KEEP_ORDER = ("completed", "running", "queued")  # which run of a seed a merge keeps; then the first


def keep_rank(run: dict) -> int:
    return KEEP_ORDER.index(run["status"]) if run["status"] in KEEP_ORDER else len(KEEP_ORDER)


def merged_status(statuses: list[str], missing: list[dict]) -> str:
    """``study_status`` of the runs a merge kept, as its parts were saved ("running" or
    "queued" while one part still trains or waits), and "partial" when every kept run has
    ended but some cell's seed is in no part."""
    status = study_status(statuses)
    return "partial" if missing and status not in ("running", "queued") else status
