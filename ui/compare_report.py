"""The Compare page's tables and exports: settings table, CSV, chart images, HTML report.

Pure functions of the comparison rows (``Workbench.compare_runs``) and plotly figures, so the
page stays a short script and the tests can read exactly what a user downloads.
"""

from __future__ import annotations

import html
import io
import os
import zipfile
from datetime import datetime, timezone

import pandas as pd
import plotly.graph_objects as go

from engine.compare import differing_settings, setting_columns
from ui.state import mfu_text

HIGHLIGHT = "background-color: #fff3b0; font-weight: 600"  # settings that differ between runs
RESULT_COLUMNS = ["run", "status", "method", "model", "dataset", "dataset_version", "tags",
                  "metric", "final_metric", "trainable_params", "total_params", "peak_memory_mb",
                  "adapter_bytes", "samples_per_second", "audio_hours_per_hour", "achieved_tflops",
                  "mfu_percent", "device", "wall_time_s", "steps"]


def results_frame(rows: list[dict]) -> pd.DataFrame:
    """The results as shown: utilisation as text, so an unknown one says why ("n/a on CPU")."""
    finals = sorted({key for row in rows for key in row if key.startswith("final_") and key != "final_metric"})
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS + finals)
    frame["mfu_percent"] = [mfu_text(row.get("mfu_percent"), row.get("device")) for row in rows]
    return frame.rename(columns={"mfu_percent": "mfu"})


def utilisation_note(rows: list[dict], labels: dict[int, str]) -> str | None:
    """Which runs have no utilisation figure and why ("n/a on CPU"); None when all have one."""
    missing = [f"{labels[row['run']]} {mfu_text(None, row['device']) if row['device'] else 'not logged'}"
               for row in rows if row.get("mfu_percent") is None]
    if not missing:
        return None
    return (f"Utilisation (MFU): {'; '.join(missing)}. A CPU has no known peak FLOP/s; for a GPU "
            "the workbench does not know, set LIM_PEAK_TFLOPS before training.")


def settings_frame(rows: list[dict]) -> pd.DataFrame:
    """Settings as rows (one column per run), so long names read across."""
    columns = setting_columns(rows)
    frame = pd.DataFrame({f"#{row['run']} {row['method']}": [display(row.get(c)) for c in columns]
                          for row in rows}, index=columns)
    frame.index.name = "setting"
    return frame


def display(value) -> str:
    return "–" if value is None else str(value)


def settings_styler(rows: list[dict], only_differing: bool = False):
    """The settings table with every setting that differs between the runs highlighted."""
    frame = settings_frame(rows)
    differing = set(differing_settings(rows))
    if only_differing:
        frame = frame.loc[[name for name in frame.index if name in differing]]
    return frame.style.apply(
        lambda column: [HIGHLIGHT if name in differing else "" for name in column.index], axis=0)


def comparison_csv(rows: list[dict]) -> bytes:
    """Results and every setting, one line per run (the columns of ``compare_runs``)."""
    ordered = RESULT_COLUMNS + sorted({k for row in rows for k in row} - set(RESULT_COLUMNS))
    return pd.DataFrame(rows, columns=ordered).to_csv(index=False).encode()


def chart_images_zip(figures: dict[str, go.Figure], formats=("png", "svg")) -> bytes:
    """Every chart as PNG and SVG, zipped. kaleido drives a headless Chrome: Debian's
    chromium when no other is configured (``BROWSER_PATH``)."""
    if os.path.exists("/usr/bin/chromium"):
        os.environ.setdefault("BROWSER_PATH", "/usr/bin/chromium")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for fmt in formats:
            blobs = images_in_one_browser(list(figures.values()), fmt)
            for name, blob in zip(figures, blobs):
                archive.writestr(f"{name}.{fmt}", blob)
    return buffer.getvalue()


def images_in_one_browser(figures: list[go.Figure], fmt: str) -> list[bytes]:
    """Render many figures with one Chrome start (seconds) instead of one per figure."""
    import tempfile
    from pathlib import Path

    import plotly.io as pio

    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / f"{index}.{fmt}" for index in range(len(figures))]
        pio.write_images(figures, paths, format=fmt, width=900, height=500)
        return [path.read_bytes() for path in paths]


def html_report(title: str, figures: dict[str, go.Figure], rows: list[dict],
                sections: dict[str, str] | None = None) -> str:
    """A self-contained, read-only page: every chart (plotly.js embedded once, so it works
    offline), the results and the settings with differences highlighted. ``sections``: more
    headed parts (title -> trusted HTML made by the caller) before the results, e.g. a
    study's table."""
    parts = []
    for index, figure in enumerate(figures.values()):
        parts.append(figure.to_html(full_html=False, include_plotlyjs=index == 0,
                                    config={"displaylogo": False}))
    results = results_frame(rows).to_html(index=False, na_rep="–", float_format=lambda v: f"{v:.4g}")
    settings = settings_styler(rows).to_html()
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px}}
table{{border-collapse:collapse;font-size:.85rem;margin:1rem 0}}
td,th{{border:1px solid #ddd;padding:.25rem .5rem;text-align:left}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>LessIsMore Workbench comparison of {len(rows)} runs, made {made}. Highlighted settings
differ between the runs.</p>
{''.join(f"<h2>{html.escape(head)}</h2>{body}" for head, body in (sections or {}).items())}
<h2>Results</h2>{results}
<h2>Charts</h2>{''.join(parts)}
<h2>Settings</h2>{settings}
</body></html>"""
