"""The training speed benchmark's report: medians over rounds, ratios to the reference, the table."""

from __future__ import annotations

import platform


def summarise(rows: list[dict]) -> list[dict]:
    """Median over rounds per (case, side); ratios against the case's reference."""
    import statistics

    grouped: dict[tuple, list[dict]] = {}
    for row in rows:
        grouped.setdefault((row["case_id"], row["side"]), []).append(row)
    table = []
    for (case_id, side), results in grouped.items():
        good = [r for r in results if "error" not in r]
        entry = {"case_id": case_id, "side": side, **{k: results[0][k] for k in ("case", "label")}}
        if not good:
            entry["error"] = results[0].get("error")
            table.append(entry)
            continue
        for key in ("samples_per_s", "audio_hours_per_hour", "peak_gib", "mfu_percent"):
            values = [r[key] for r in good if r.get(key) is not None]
            entry[key] = statistics.median(values) if values else None
        entry["rounds"] = len(good)
        entry["device"] = good[0]["device"]
        table.append(entry)
    references = {e["case_id"]: e for e in table if e["side"] == "reference" and "error" not in e}
    for entry in table:
        ref = references.get(entry["case_id"]) or next(
            (r for r in references.values() if r["case"]["model"] == entry["case"]["model"]
             and r["case"]["method"] == entry["case"]["method"]
             and r["case"]["audio"] == entry["case"]["audio"]), None)
        if ref and "error" not in entry and entry["side"] == "engine":
            entry["speedup"] = entry["samples_per_s"] / ref["samples_per_s"]
            entry["memory_ratio"] = entry["peak_gib"] / ref["peak_gib"]
    return table


def format_table(table: list[dict]) -> str:
    """The summary as a Markdown table (as docs/benchmarks.md shows it)."""
    lines = ["| model | method | audio | batch | side | samples/s | audio h/h | peak GiB | MFU % | × reference | memory × |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in table:
        c = e["case"]
        side = e["side"] + (f" ({e['label']})" if e.get("label") and e["side"] == "engine" else "")
        if "error" in e:
            lines.append(f"| {c['model']} | {c['method']} | {c['audio']} | {c['training']['per_device_train_batch_size']} | {side} | "
                         f"failed: {str(e['error'])[:120]} | | | | | |")
            continue
        fmt = lambda v, p=1: "—" if v is None else f"{v:.{p}f}"  # noqa: E731
        lines.append(f"| {c['model']} | {c['method']} | {c['audio']} | {c['training']['per_device_train_batch_size']} | {side} | "
                     f"{fmt(e['samples_per_s'])} | {fmt(e['audio_hours_per_hour'], 0)} | "
                     f"{fmt(e['peak_gib'], 2)} | {fmt(e['mfu_percent'])} | "
                     f"{fmt(e.get('speedup'), 2)} | {fmt(e.get('memory_ratio'), 2)} |")
    return "\n".join(lines)


def versions() -> dict:
    """Python and the libraries both sides train with."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "bitsandbytes"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
