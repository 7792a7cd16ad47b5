"""Screenshot one figure of a bench report.html for the README (default: the first, GR-LR at the stop rule).

    python benchmarks/report_screenshot.py runs/bench-fashion-quick-v2/report.html assets/bench/gr-lr-quick.png
    python benchmarks/report_screenshot.py REPORT OUT.png 2   # the second figure: GR-LR at the first right step
"""
from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main(report: str, out: str, figure: int = 1) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(Path(report).resolve().as_uri())
        page.wait_for_selector(".plotly-graph-div")
        page.locator(".plotly-graph-div").nth(figure - 1).screenshot(path=out)
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 1)
