"""Fixtures of the browser suite: the built site on localhost, Chromium, and
each page opened once per viewport (see scripts/site_tools.py).

Run it with ``make browser-test`` (it builds the site first), or
``pytest tests/browser`` on a site already built in ``_build/html``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlparse

import pytest
from site_tools import (
    DESKTOP,
    PHONE,
    mathjax_available,
    offline,
    serve,
    site_pages,
)

playwright_api = pytest.importorskip(
    "playwright.sync_api",
    reason="the browser suite needs playwright (make install)",
)

# Requests and errors of third-party scripts that could not load (the suite
# runs offline): reported at the end of the run, never failed.
THIRD_PARTY: dict[str, set[str]] = {"requests": set(), "errors": set()}


@dataclass
class Visit:
    """A page opened in Chromium, with what it logged while loading."""

    page: object
    own_errors: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    mathjax: bool = False


def _is_local(url: str) -> bool:
    return urlparse(url).hostname in ("127.0.0.1", "localhost")


# An error of the page's own scripts that only means a third-party library
# did not load: (its message, the library's address).
CONSEQUENCES = [
    # bertviz's output calls require.js, which the page loads from cdnjs
    ("ReferenceError: require is not defined", "require.min.js"),
]


def _classify(text: str, url: str | None, visit: Visit) -> None:
    if url and not _is_local(url):
        THIRD_PARTY["errors"].add(f"{url}: {text[:160]}")
        return
    for message, library in CONSEQUENCES:
        refused = [u for u in visit.refused if library in u]
        if text.startswith(message) and refused:
            THIRD_PARTY["errors"].add(
                f"{visit.page.url}: {text[:120]} ({refused[0]} unreachable)"
            )
            return
    visit.own_errors.append(text)


@pytest.fixture(scope="session")
def base_url():
    with serve() as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    from site_tools import launch

    with playwright_api.sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


def open_page(browser, base_url: str, path: str, viewport: dict) -> Visit:
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    visit = Visit(page)
    requests = visit.refused
    offline(page, requests)

    def on_console(message) -> None:
        if message.type == "error":
            _classify(message.text, message.location.get("url"), visit)

    def on_page_error(error) -> None:
        stack = error.stack or ""
        first = re.search(r"https?://[^\s)]+", stack)
        _classify(
            f"{error.name}: {error.message}",
            first.group(0) if first else None,
            visit,
        )

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    response = page.goto(base_url + path, wait_until="load")
    assert response is not None and response.ok, f"{path}: {response}"
    if mathjax_available():
        visit.mathjax = page.evaluate(
            """async () => {
                if (!window.MathJax || !MathJax.startup) return false;
                await MathJax.startup.promise;
                return true;
            }"""
        )
    THIRD_PARTY["requests"].update(requests)
    return visit


@pytest.fixture(scope="session")
def visits(browser, base_url):
    """Each page of _toc.yml opened once per viewport, on demand."""
    opened: dict[tuple[str, str], Visit] = {}

    def get(page, viewport: str = "desktop") -> Visit:
        key = (page.path, viewport)
        if key not in opened:
            size = DESKTOP if viewport == "desktop" else PHONE
            opened[key] = open_page(browser, base_url, page.path, size)
        return opened[key]

    yield get
    for visit in opened.values():
        visit.page.context.close()


def pytest_generate_tests(metafunc):
    if "site_page" in metafunc.fixturenames:
        pages = site_pages()
        metafunc.parametrize("site_page", pages, ids=[p.entry for p in pages])


def pytest_terminal_summary(terminalreporter):
    from .test_site import WIDE_OUTPUTS

    write = terminalreporter.write_line
    if WIDE_OUTPUTS:
        terminalreporter.section("outputs that scroll in their own box")
        for line in WIDE_OUTPUTS:
            write(line)
    if not (THIRD_PARTY["requests"] or THIRD_PARTY["errors"]):
        return
    terminalreporter.section("third-party resources (reported, not failed)")
    for url in sorted(THIRD_PARTY["requests"]):
        write(f"unreachable (offline run): {url}")
    for error in sorted(THIRD_PARTY["errors"]):
        write(f"error of a third-party resource: {error}")
    if not mathjax_available():
        write(
            "MathJax: no local copy (make mathjax), so the maths check was "
            "skipped"
        )
