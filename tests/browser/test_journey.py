"""A person's first session in a real browser, with accounts on: sign up -> home -> training
(only their own runs; start a QLoRA run, watch it finish) -> compare -> playground -> studies
(launch a tiny grid, watch it finish) -> log out and in. Streamlit serves the real app;
Playwright drives Debian's chromium."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "test-artifacts"
# Without these, chromium tries to reach Google's services on a closed network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(demo_home):
    from engine import Workbench

    # Another account with a run of its own (run #1, kept but never trained): the journey's
    # person must not see it. It signed up first, so it is the admin and the person is not.
    workbench = Workbench(demo_home)
    other = workbench.for_user(workbench.sign_up("teacher", "a long chalkboard passphrase"))
    other.cancel_run(other.submit_run("demo-text", "tiny-bert", "lora", {}, {"max_steps": 2}))
    workbench.storage.close()
    port = free_port()
    env = {**os.environ, "LIM_HOME": str(demo_home), "HF_HUB_OFFLINE": "1", "LIM_AUTH": "on"}
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
            break
        except OSError:
            time.sleep(0.3)
    else:
        process.kill()
        pytest.fail("streamlit did not start: " + process.stdout.read())
    yield url
    process.terminate()
    process.wait(timeout=20)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_first_session_trains_and_compares(server, demo_home):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    expect.set_options(timeout=60_000)  # a cold start imports torch and transformers first
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(server)
        page.get_by_role("tab", name="Sign up").click()
        page.get_by_label("Username").last.fill("student")
        page.get_by_label("Password", exact=True).last.fill("my own long passphrase")
        page.get_by_label("Password again").fill("my own long passphrase")
        page.get_by_role("button", name="Sign up").click()
        expect(page.get_by_text("Logged in as student")).to_be_visible()
        expect(page.get_by_text("LessIsMore Workbench").first).to_be_visible()
        expect(page.get_by_test_id("stDataFrame").first).to_be_visible()  # canvas-drawn table
        expect(page.get_by_test_id("stMetric").first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "home.png"), full_page=True)

        page.get_by_role("link", name="Training").first.click()
        expect(page.get_by_role("heading", name="Training")).to_be_visible()
        expect(page.get_by_text("No runs yet.")).to_be_visible()  # not the teacher's run #1
        page.get_by_text("a number of steps", exact=True).click()  # the basics: how long
        page.get_by_text("Advanced: every other setting").click()  # the rest, plain labels
        for label, value in [("Steps", "6"), ("Validate every N steps", "3"),
                             ("Longest transcript (tokens)", "8")]:
            field = page.get_by_label(label, exact=True)
            field.fill(value)
            field.press("Enter")
        page.get_by_role("button", name="Start").click()
        expect(page.get_by_text("queued: it starts").first).to_be_visible()
        # The live monitor refreshes by itself until the run completes.
        # 6 steps and an evaluation: 3 minutes on 2 free cores, longer on a loaded machine
        expect(page.get_by_text("completed").first).to_be_visible(timeout=600_000)
        expect(page.get_by_text("step 6 / 6").first).to_be_visible()
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "training.png"), full_page=True)

        page.get_by_role("link", name="Compare").first.click()
        expect(page.get_by_role("heading", name="Compare runs")).to_be_visible()
        expect(page.locator(".js-plotly-plot").first).to_be_visible()  # the Curves tab
        page.get_by_role("tab", name="Less is more").click()
        expect(page.get_by_text("Less is more: quality against peak memory")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)

        page.get_by_role("link", name="Playground").first.click()
        expect(page.get_by_role("heading", name="Playground")).to_be_visible()
        page.get_by_role("combobox", name="Fine-tuned run").click()
        page.get_by_role("option").filter(has_text="qlora").first.click()
        from engine import Workbench

        first_item = Workbench(demo_home).dataset_items("demo-speech", "validation", limit=1)[0]
        page.get_by_role("button", name=first_item["text"][:28]).first.click()  # a demo item
        expect(page.get_by_role("heading", name="Fine-tuned: run #2 (qlora)")).to_be_visible()
        expect(page.get_by_text("latency")).to_have_count(2)
        page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)

        # Studies: a tiny grid (tiny-bert, 2 methods x 1 rank x 2 seeds, 2 steps each) from the form
        page.get_by_role("link", name="Studies").first.click()
        expect(page.get_by_role("heading", name="Studies")).to_be_visible()
        expect(page.get_by_text("No studies yet").first).to_be_visible()
        page.get_by_role("combobox", name="Dataset").click()
        page.get_by_role("option", name="demo-text").click()
        expect(page.get_by_role("combobox", name="Model")).to_be_visible()
        for label, value in [("Ranks (r)", "2"), ("Seeds", "1, 2"), ("Steps per run", "2")]:
            field = page.get_by_label(label, exact=True)
            field.fill(value)
            field.press("Enter")
        expect(page.get_by_text("4 runs (2 cells × 2 seeds), 8 steps in all")).to_be_visible()
        page.get_by_role("button", name="Launch study").click()
        # the progress refreshes by itself; the page redraws whole when the study ends
        expect(page.get_by_text("4 of 4 runs ended (4 completed)")).to_be_visible(timeout=300_000)
        expect(page.get_by_text("Every cell (mean ± standard deviation over its seeds)")).to_be_visible()
        expect(page.get_by_text("Welch's t-test").first).to_be_visible()
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "studies.png"), full_page=True)

        page.get_by_role("button", name="Log out").click()
        expect(page.get_by_text("You logged out.")).to_be_visible()
        page.get_by_label("Username").first.fill("student")
        page.get_by_label("Password", exact=True).first.fill("my own long passphrase")
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_text("Logged in as student")).to_be_visible()
        browser.close()
