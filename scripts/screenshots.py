"""Screenshots of the built site for the README: a chapter and its explorer,
at desktop and at phone width, in Debian's Chromium.

    make screenshots            # builds the site first
    python scripts/screenshots.py [--chapter book/local_attention] [--out docs]

Writes ``chapter-desktop.png``, ``chapter-phone.png``, ``explorer-desktop.png``
and ``explorer-phone.png`` into ``--out``. Requests that leave the machine are
answered as in the browser suite (scripts/site_tools.py): MathJax from
the local copy of ``make mathjax`` when there is one, nothing else.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

from site_tools import DESKTOP, PHONE, launch, offline, serve  # noqa: E402


def shoot(browser, url: str, out: pathlib.Path, name: str, size) -> None:
    context = browser.new_context(viewport=size, device_scale_factor=1)
    page = context.new_page()
    offline(page, [])
    page.goto(url, wait_until="load")
    page.evaluate(
        "async () => { if (window.MathJax && MathJax.startup) "
        "await MathJax.startup.promise; }"
    )
    page.screenshot(path=str(out / f"chapter-{name}.png"))
    explorer = page.locator(".ea-explorer").first
    if explorer.count():
        explorer.scroll_into_view_if_needed()
        slider = explorer.locator("input[type=range]").first
        if slider.count():
            slider.focus()
            page.keyboard.press("ArrowRight")
        explorer.screenshot(path=str(out / f"explorer-{name}.png"))
    else:
        print(f"no explorer on {url}", file=sys.stderr)
    context.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapter", default="book/local_attention")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import sync_playwright

    with serve() as base, sync_playwright() as playwright:
        browser = launch(playwright)
        url = f"{base}{args.chapter}.html"
        shoot(browser, url, out, "desktop", DESKTOP)
        shoot(browser, url, out, "phone", PHONE)
        browser.close()
    for png in sorted(out.glob("*.png")):
        print(png.relative_to(ROOT) if png.is_relative_to(ROOT) else png)


if __name__ == "__main__":
    main()
