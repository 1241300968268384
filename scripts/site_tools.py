"""The built site as a browser sees it: its pages, a local server, Chromium.

Shared by the browser suite (tests/browser) and scripts/screenshots.py.

- ``site_pages()`` reads ``_toc.yml``: every page of the book, with the title
  its source gives it and the Colab link a chapter must carry, so chapters
  added later are covered without touching the suite.
- ``serve(site)`` serves the built HTML on a free localhost port.
- ``launch(playwright)`` starts Debian's Chromium (``$CHROMIUM``, else
  ``/usr/bin/chromium``); Playwright's own browsers are not needed.
- ``offline(page, log)`` answers every request that leaves localhost: MathJax
  from a local copy when there is one (``make mathjax``, or ``$MATHJAX_DIR``),
  anything else is aborted and written to ``log`` as an unreachable
  third-party request, so a run is the same with or without a network.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import pathlib
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

import yaml
from notebook_tools import toc_files

ROOT = pathlib.Path(__file__).resolve().parents[1]

SITE = pathlib.Path(os.environ.get("SITE_DIR", ROOT / "_build" / "html"))

# The address the built pages load MathJax 3 from (Sphinx's mathjax_path in
# Jupyter Book 1.x), and where `make mathjax` puts npm's copy of it.
MATHJAX_CDN = "https://cdn.jsdelivr.net/npm/mathjax@3/"
MATHJAX_LOCAL = pathlib.Path(
    os.environ.get(
        "MATHJAX_DIR", ROOT / ".cache" / "mathjax" / "node_modules" / "mathjax"
    )
)

DESKTOP = {"width": 1300, "height": 900}
PHONE = {"width": 390, "height": 844}


@dataclass(frozen=True)
class Page:
    """One page of ``_toc.yml``: where its source is and what it shows."""

    entry: str  # e.g. "book/local_attention"
    source: pathlib.Path
    title: str  # the first "# " heading of the source
    colab: str | None  # the launch link a notebook chapter must carry

    @property
    def path(self) -> str:
        return f"{self.entry}.html"


def toc_entries(toc_path: pathlib.Path = ROOT / "_toc.yml") -> list[str]:
    """Every ``file:`` of ``_toc.yml``, the root first, in order (the
    notebook tests' own reading of it)."""
    return toc_files(toc_path)


def _first_heading(markdown: str) -> str | None:
    for line in markdown.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return None


def _title(source: pathlib.Path) -> str:
    if source.suffix == ".ipynb":
        cells = json.loads(source.read_text())["cells"]
        for cell in cells:
            if cell["cell_type"] == "markdown":
                title = _first_heading("".join(cell["source"]))
                if title:
                    return title
    else:
        title = _first_heading(source.read_text())
        if title:
            return title
    raise ValueError(f"{source} has no '# ' title")


def colab_link(entry: str, config_path: pathlib.Path = ROOT / "_config.yml"):
    """The Colab address of ``entry``'s notebook in the repository that
    ``_config.yml`` names."""
    config = yaml.safe_load(config_path.read_text())
    repo = config["repository"]
    slug = urlparse(repo["url"]).path.strip("/")
    colab = config["launch_buttons"]["colab_url"].rstrip("/")
    book = (repo.get("path_to_book") or "").strip("/")
    path = f"{book}/{entry}" if book else entry
    return f"{colab}/github/{slug}/blob/{repo['branch']}/{path}.ipynb"


def site_pages() -> list[Page]:
    pages = []
    for entry in toc_entries():
        for suffix in (".ipynb", ".md"):
            source = ROOT / f"{entry}{suffix}"
            if source.exists():
                break
        else:
            raise FileNotFoundError(f"_toc.yml lists {entry}, which is absent")
        colab = colab_link(entry) if suffix == ".ipynb" else None
        pages.append(Page(entry, source, _title(source), colab))
    return pages


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(site: pathlib.Path = SITE) -> Iterator[str]:
    """Serve ``site`` on 127.0.0.1 (a free port); yields the base URL."""
    if not (site / "index.html").exists():
        raise FileNotFoundError(
            f"no built site in {site}: run `make book` first "
            f"(`make browser-test` does)."
        )
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def chromium_path() -> str:
    """Debian's Chromium, or ``$CHROMIUM``; says how to get it if absent."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium")
    path = path or "/usr/bin/chromium"
    if not pathlib.Path(path).exists():
        raise FileNotFoundError(
            f"no Chromium at {path}: install Debian's package "
            f"(`sudo apt-get install chromium`, which `make browser-deps` "
            f"runs), or point $CHROMIUM at a Chromium or Chrome binary."
        )
    return path


def launch(playwright):
    return playwright.chromium.launch(
        executable_path=chromium_path(),
        args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
    )


def mathjax_available() -> bool:
    return (MATHJAX_LOCAL / "es5" / "tex-mml-chtml.js").exists()


_TYPES = {
    ".js": "application/javascript",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".json": "application/json",
    ".css": "text/css",
}


def offline(page, log: list[str]) -> None:
    """Route every request that leaves localhost (see the module's text)."""

    def handle(route) -> None:
        url = route.request.url
        host = urlparse(url).hostname
        if host in ("127.0.0.1", "localhost") or url.startswith("data:"):
            route.continue_()
            return
        if url.startswith(MATHJAX_CDN) and mathjax_available():
            relative = re.sub(r"[?#].*$", "", url[len(MATHJAX_CDN) :])
            local = (MATHJAX_LOCAL / relative).resolve()
            if local.is_file() and MATHJAX_LOCAL.resolve() in local.parents:
                route.fulfill(
                    status=200,
                    body=local.read_bytes(),
                    headers={
                        "Content-Type": _TYPES.get(
                            local.suffix, "application/octet-stream"
                        ),
                        "Access-Control-Allow-Origin": "*",
                    },
                )
                return
        log.append(url)
        route.abort("internetdisconnected")

    page.route("**/*", handle)
