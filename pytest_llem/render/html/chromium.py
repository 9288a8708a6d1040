"""Open a report in headless Chromium: the rendered DOM, console messages and a screenshot.

Used by the test suite (every chart must render, no console message may appear) and to
regenerate the screenshot in docs/:

    python -m pytest_llem.render.html.chromium report.html docs/report-example.png

The browser runs with every background network feature off and a throwaway profile; the
report itself references nothing outside the file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
)
# Chromium logs every console message (log, warning, error, uncaught exception) like this.
_CONSOLE = re.compile(r":CONSOLE(?::\d+|\(\d+\))\]\s*(.*)")


def find_chromium() -> str | None:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass(frozen=True)
class ChartCount:
    """One `<svg class="chart">` in the rendered DOM and how many plotted marks it holds."""

    chart_id: str
    data_elements: int


@dataclass(frozen=True)
class PageCheck:
    dom: str
    console: list[str]
    charts: list[ChartCount]


class _ChartCounter(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.charts: list[ChartCount] = []
        self._current: str | None = None
        self._count = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if tag == "svg" and "chart" in classes:
            self._current, self._count = attributes.get("data-chart") or "?", 0
        elif self._current is not None and "data" in classes:
            self._count += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg" and self._current is not None:
            self.charts.append(ChartCount(self._current, self._count))
            self._current = None


def count_charts(dom: str) -> list[ChartCount]:
    parser = _ChartCounter()
    parser.feed(dom)
    return parser.charts


def _run(browser: str, profile: str, args: Sequence[str], timeout_s: float) -> tuple[str, list[str]]:
    completed = subprocess.run(
        [browser, *_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    console = [m.group(1) for line in completed.stderr.splitlines() if (m := _CONSOLE.search(line))]
    if completed.returncode != 0:
        raise RuntimeError(f"{browser} exited {completed.returncode}: {completed.stderr[-2000:]}")
    return completed.stdout, console


def check_page(
    page: Path,
    screenshot: Path | None = None,
    window: tuple[int, int] = (1400, 2000),
    browser: str | None = None,
    timeout_s: float = 120.0,
) -> PageCheck:
    """Render `page`: the DOM after load, every console message, charts and their marks, and
    (when asked) a PNG of the first `window` pixels."""
    executable = browser or find_chromium()
    if executable is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    url = page.resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="llem-chromium-") as profile:
        dom, console = _run(executable, profile, ["--dump-dom", url], timeout_s)
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            _, more = _run(
                executable,
                profile,
                [f"--screenshot={screenshot.resolve()}", f"--window-size={window[0]},{window[1]}", url],
                timeout_s,
            )
            console += more
    return PageCheck(dom=dom, console=console, charts=count_charts(dom))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (2, 3):
        print(
            "usage: python -m pytest_llem.render.html.chromium REPORT.html SHOT.png [WIDTHxHEIGHT]",
            file=sys.stderr,
        )
        return 2
    width, height = (int(v) for v in (args[2] if len(args) == 3 else "1400x2000").split("x"))
    check = check_page(Path(args[0]), Path(args[1]), (width, height))
    empty = [chart.chart_id for chart in check.charts if chart.data_elements == 0]
    print(f"{len(check.charts)} chart(s); console messages: {len(check.console)}; empty charts: {empty}")
    for message in check.console:
        print(f"console: {message}")
    return 1 if check.console or empty else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
