"""What a study's results say: each method against a reference, paired by seed and by test item.

Pure functions of a study's table (``engine.studies.study_table``) and its runs' results
(``engine.studies.run_results``: final and validation metrics, per-item test scores), shared by
``Workbench.study_summary``, ``study merge`` and the Studies page:

- ``read_study``: the comparisons of a study. Two readings: **cells** (every cell against a
  reference cell, at the sizes the grid set: equal trainable parameters when the ranks or
  budgets match) and **tuned** (``tune_per_method``: each method's best cell over the grid's
  other axes, learning rate first, chosen on the *validation* metric's mean over seeds, then
  compared on the test split with the chosen settings shown).
- ``compare_cells``: one comparison. The same seed gives two runs the same data order and
  initialisation, and both are scored on the same test items, so the comparison is paired
  twice: the seeds both cells completed are paired, and the items of each are paired in a
  per-item bootstrap (``engine.significance.paired_bootstrap``) of the corpus-level
  difference, pooled over those seeds. Without per-item scores (runs scored before they were
  kept, or files that lack them) the paired t-test over seeds is the test.
- Holm's correction over a study's comparisons, a verdict for each, and the power line: the
  smallest difference this test set can detect.
"""

from __future__ import annotations

import statistics

from engine.errors import SettingsError
from engine.metrics import METRIC_DIRECTION
from engine.significance import ALPHA, POWER, RESAMPLES, holm, paired_bootstrap, paired_seed_test

BOOTSTRAP_TEST = "paired bootstrap over test items"
SEED_TEST = "paired t-test over seeds"


def statistics_text() -> str:
    """How the comparisons are decided, for the page, the report and the docs' readers."""
    return (
        "Paired: runs with the same seed share data order and initialisation, and every run is "
        "scored on the same test items. Difference = method − reference in the corpus-level "
        "metric (WER from summed word errors over summed reference words, accuracy from correct "
        "answers), pooled over the seeds both completed. 95 % interval and p: a "
        f"{BOOTSTRAP_TEST} ({RESAMPLES:,} resamples of the items, an item's two scores together; "
        "percentile interval; fixed seed: the same every time); p is twice the smaller share of resampled "
        "differences on either side of 0. p (Holm): Holm's correction over this study's "
        f"comparisons; a difference counts when it is below {ALPHA}. p (seeds): the {SEED_TEST} "
        "(scipy.stats.ttest_rel), which also counts the seeds' spread but finds only large "
        "differences with three seeds; it is the test where runs kept no per-item scores. "
        "\"Not shown to differ\" is not \"equal\": see the detectable difference.")


def compare_cells(row: dict, reference: dict, results: dict) -> dict:
    """``row`` against ``reference`` (two rows of a study's table), from ``results`` (run id ->
    ``run_results``): ``difference`` (row − reference), ``ci95``, ``p``, ``test`` and, with
    per-item scores, ``standard_error`` and ``detectable``; ``p_seeds`` beside them. ``p``
    is None when nothing can be tested (``verdict`` says why)."""
    metric = row["metric"] or reference["metric"]
    mine, theirs = dict(row["seed_runs"]), dict(reference["seed_runs"])
    seeds = [seed for seed in mine if seed in theirs
             and results[mine[seed]].get("final_metric") is not None
             and results[theirs[seed]].get("final_metric") is not None]
    out = {"method": row["cell"], "reference": reference["cell"], "metric": metric, "seeds": seeds,
           "difference": None, "ci95": None, "p": None, "test": None, "p_seeds": None,
           "standard_error": None, "detectable": None, "items": None, "split": None, "better": None}
    if not seeds:
        out["verdict"] = "no seed completed in both cells yet"
        return out
    by_seed = paired_seed_test([results[mine[s]]["final_metric"] for s in seeds],
                               [results[theirs[s]]["final_metric"] for s in seeds])
    out["p_seeds"] = by_seed["p"] if by_seed else None
    items = pooled_items([results[mine[s]].get("items") for s in seeds],
                         [results[theirs[s]].get("items") for s in seeds], metric)
    if items is not None:
        found = paired_bootstrap(*items)
        split_name = results[mine[seeds[0]]]["items"]["split"]
        out.update(difference=found["difference"], ci95=found["ci95"], p=found["p"],
                   standard_error=found["standard_error"], detectable=found["detectable"],
                   items=found["items"], split=split_name,
                   # the split scored: "test items", or "validation items" where there is no test split
                   test=f"{BOOTSTRAP_TEST.replace('test items', f'{split_name} items')} ({found['items']} "
                        f"items; seeds {_seed_list(seeds)} paired and pooled; {found['resamples']:,} resamples)")
    elif by_seed is not None:
        out.update(difference=by_seed["difference"], ci95=by_seed["ci95"], p=by_seed["p"],
                   test=f"{SEED_TEST} (seeds {_seed_list(seeds)}; no per-item scores)")
    else:
        out["difference"] = results[mine[seeds[0]]]["final_metric"] - results[theirs[seeds[0]]]["final_metric"]
        out["verdict"] = ("undecided: one seed in both cells and no per-item scores; needs two "
                          "or more seeds, or runs that kept their predictions")
    if out["difference"]:
        out["better"] = (out["difference"] > 0) == METRIC_DIRECTION.get(metric or "", True)
    return out


def _seed_list(seeds: list) -> str:
    return ", ".join(map(str, seeds))


def pooled_items(mine: list[dict | None], theirs: list[dict | None], metric: str | None):
    """Per-item (method scores, reference scores, weights), each summed over the paired seeds'
    runs (``mine[i]`` and ``theirs[i]`` are seed i's ``item_scores``); None unless every run
    kept them for the same items (same split, positions and weights) of the table's metric."""
    runs = mine + theirs
    if not runs or any(items is None for items in runs):
        return None
    first = runs[0]
    if first["metric"] != metric or any(
            (items["split"], items["positions"], items["weights"], items["metric"])
            != (first["split"], first["positions"], first["weights"], first["metric"]) for items in runs):
        return None
    total = lambda group: [sum(values) for values in zip(*(items["scores"] for items in group))]  # noqa: E731
    return total(mine), total(theirs), [weight * len(mine) for weight in first["weights"]]


def tuned_units(table: list[dict]) -> tuple[list[tuple[str, dict]], list[dict]]:
    """Each method's best cell (one per ``group``: a method at one size and target set) over
    the grid's other axes, by the validation metric's mean over seeds (the first cell wins a
    tie); a group of one cell is its own choice. Returns the units (group label, chosen row) and
    what was chosen from what (``tuning``)."""
    groups: dict[str, list[dict]] = {}
    for row in table:
        groups.setdefault(row["group"], []).append(row)
    units, tuning = [], []
    for label, rows in groups.items():
        higher = METRIC_DIRECTION.get(next((r["metric"] for r in rows if r["metric"]), "") or "", True)
        scored = [r for r in rows if r.get("validation_metric_mean") is not None]
        if len(rows) == 1:
            chosen, how = rows[0], "its only cell"
        elif scored:
            chosen = (max if higher else min)(scored, key=lambda r: r["validation_metric_mean"])
            how = "best validation mean over seeds"
        else:
            chosen, how = None, "no validation score yet: nothing chosen"
        tuning.append({"method": label, "metric": next((r["metric"] for r in rows if r["metric"]), None),
                       "cell": chosen["cell"] if chosen else None,
                       "chosen": chosen["axes"] if chosen else None, "chosen_by": how,
                       "candidates": [{"cell": r["cell"], "axes": r["axes"], "completed": r["completed"],
                                       "validation_mean": r.get("validation_metric_mean"),
                                       "validation_std": r.get("validation_metric_std")} for r in rows]})
        if chosen is not None:
            units.append((label, chosen))
    return units, tuning


def read_study(table: list[dict], results: dict, reference: str | None = None, tune: bool = False) -> dict:
    """The study's comparisons: every unit (a cell, or with ``tune`` a method's chosen cell)
    against the ``reference`` unit (its label; default the first), Holm-corrected, with a
    verdict each, ``tuning`` (with ``tune``) and the ``power`` line."""
    if tune:
        units, tuning = tuned_units(table)
    else:
        units, tuning = [(row["cell"], row) for row in table], []
    labels = [label for label, _ in units]
    reference = reference or (labels[0] if labels else None)
    if reference is not None and reference not in labels:
        raise SettingsError(f"no {'method' if tune else 'cell'} {reference!r} in this study"
                            + (f"; choose one of: {', '.join(labels)}" if labels else ""))
    by_label = dict(units)
    comparisons = []
    for label, row in units:
        if label == reference:
            continue
        found = compare_cells(row, by_label[reference], results)
        comparisons.append({**found, "method": label, "cell": row["cell"], "chosen": row["axes"],
                            "reference": reference, "reference_cell": by_label[reference]["cell"]})
    for comparison, adjusted in zip(comparisons, holm([c["p"] for c in comparisons])):
        comparison["p_holm"] = adjusted
        comparison["significant"] = None if adjusted is None else adjusted < ALPHA
        comparison.setdefault("verdict", verdict(comparison))
    notes = []
    if tune and any(c["split"] == "validation" for c in comparisons):
        notes.append("This dataset has no test split: the cells were chosen and compared on the "
                     "validation split, so the tuned differences are optimistic.")
    return {"reading": "tuned" if tune else "cells", "reference": reference, "comparisons": comparisons,
            "tuning": tuning, "power": power_line(comparisons), "statistics": statistics_text(),
            "notes": notes}


def verdict(comparison: dict) -> str:
    if comparison["p_holm"] is None:
        return "undecided"
    if comparison["significant"]:
        word = "better" if comparison["better"] else "worse"
        return f"{word} (Holm-adjusted p = {comparison['p_holm']:.3g})"
    return f"not shown to differ (Holm-adjusted p = {comparison['p_holm']:.3g})"


def power_line(comparisons: list[dict]) -> dict | None:
    """The smallest difference this test set can detect: for each bootstrapped comparison
    (z₀.₉₇₅ + z₀.₈₀) × its bootstrap standard error (``engine.significance.detectable_difference``);
    the line gives their median and range. None without a bootstrapped comparison."""
    found = [c["detectable"] for c in comparisons if c["detectable"] is not None]
    if not found:
        return None
    metric = next(c["metric"] for c in comparisons if c["detectable"] is not None)
    items = max(c["items"] for c in comparisons if c["items"])
    median = statistics.median(found)
    scale, unit = (100, " points") if metric in ("wer", "accuracy", "cer") else (1, "")
    if not median:
        return {"metric": metric, "detectable": None, "low": min(found), "high": max(found), "items": items,
                "how": "", "text": f"On these {items} test items the compared runs gave the same answers "
                                   "(or nearly): no spread to work out the detectable difference from."}
    return {"metric": metric, "detectable": median, "low": min(found), "high": max(found), "items": items,
            "how": f"2.80 × the bootstrap standard error of each difference: the difference a two-sided "
                   f"test at α = {ALPHA} finds {POWER:.0%} of the time (before Holm's correction, "
                   "which asks for more)",
            "text": f"On these {items} test items, differences in {metric} smaller than about "
                    f"{median * scale:.2g}{unit} (median over comparisons; {min(found) * scale:.2g} to "
                    f"{max(found) * scale:.2g}) cannot be told apart from chance at {POWER:.0%} power."}
