"""How long each page takes to load the first time, as a newcomer meets it.

    LIM_HOME=/tmp/lim-home python -m engine demo        # once
    LIM_HOME=/tmp/lim-home python -m benchmarks.page_load [--repeat 3]

Each repeat is a fresh Python process (nothing imported, nothing cached), as after
``make run``: it opens Home (the app's first script run: imports, the workbench, its worker),
then every other page once, through Streamlit's AppTest (the same script runs a browser
triggers, without the network). Prints seconds per page, the median over the repeats.
``python -X importtime -c "import engine"`` says where the import time goes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["pages/datasets.py", "pages/models.py", "pages/methods.py", "pages/training.py",
         "pages/compare.py", "pages/playground.py"]

CHILD = """
import json, sys, time
started = time.perf_counter()
from streamlit.testing.v1 import AppTest
app = AppTest.from_file(sys.argv[1], default_timeout=300)
app.run()
assert not app.exception, app.exception
seconds = {"streamlit import + Home": time.perf_counter() - started}
for page in sys.argv[2:]:
    began = time.perf_counter()
    app.switch_page(page).run()
    assert not app.exception, (page, app.exception)
    seconds[page] = time.perf_counter() - began
from ui.state import shutdown_workbenches
shutdown_workbenches()
print(json.dumps(seconds))
"""


def one_process() -> dict[str, float]:
    result = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "app.py"), *PAGES], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = [one_process() for _ in range(args.repeat)]
    print(f"{'page':<28} median s   (of {args.repeat} fresh processes)")
    for name in runs[0]:
        print(f"{name:<28} {statistics.median(r[name] for r in runs):8.2f}")


if __name__ == "__main__":
    main()
