"""Screenshot the first figure (overall GR-LR curves) of a bench report.html for the README.

    python benchmarks/report_screenshot.py runs/bench-fashion-quick/report.html assets/bench/gr-lr-quick.png
"""
from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main(report: str, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(Path(report).resolve().as_uri())
        page.wait_for_selector(".plotly-graph-div")
        page.locator(".plotly-graph-div").first.screenshot(path=out)
        browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
