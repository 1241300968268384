"""pytest configuration for `pytest --nbval book`.

The kernels nbval starts inherit this process's environment;
scripts/execute_notebooks.py sets the same NOTEBOOK_ENV, so committed outputs
and test runs see the same settings.
"""

from __future__ import annotations

import os

from notebook_tools import NOTEBOOK_ENV

for name, value in NOTEBOOK_ENV.items():
    os.environ[name] = value

collect_ignore_glob = ["**/.ipynb_checkpoints/*"]

# Each chapter's time, printed at the end of the run: DESIGN.md §4 gives
# a budget per chapter, and --durations shows single cells only.
_chapter_seconds: dict[str, float] = {}
_chapter_cells: dict[str, int] = {}


def pytest_runtest_logreport(report):
    chapter = report.nodeid.split("::")[0]
    _chapter_seconds[chapter] = (
        _chapter_seconds.get(chapter, 0.0) + report.duration
    )
    if report.when == "call":
        _chapter_cells[chapter] = _chapter_cells.get(chapter, 0) + 1


def pytest_terminal_summary(terminalreporter):
    if not _chapter_seconds:
        return
    terminalreporter.section("time per chapter")
    for chapter, seconds in sorted(
        _chapter_seconds.items(), key=lambda item: -item[1]
    ):
        cells = _chapter_cells.get(chapter, 0)
        terminalreporter.write_line(
            f"{seconds:8.1f} s  {cells:4d} cells  {chapter}"
        )
    total = sum(_chapter_seconds.values())
    terminalreporter.write_line(f"{total:8.1f} s  in all")
