"""The built site in Chromium, page by page of _toc.yml (issue 14).

Every page loads with its title, its figures are loaded images, its internal
links resolve, a chapter's Colab button opens that chapter's notebook in the
repository, no page logs a JavaScript error of its own, code and tables fit
at desktop width, the page is usable at phone width, the maths is typeset,
and the kernel-free explorers change their picture when moved.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import unquote, urljoin, urlparse

import pytest
from site_tools import SITE, mathjax_available, site_pages


def test_the_toc_has_pages():
    entries = [p.entry for p in site_pages()]
    assert len(entries) >= 5 and entries[0] == "book/index"


def test_page_loads_with_its_title(site_page, visits):
    page = visits(site_page).page
    heading = page.locator("article.bd-article h1").first.inner_text()
    heading = heading.replace("#", "").replace("\u00b6", "").strip()
    assert heading == site_page.title
    assert page.title().startswith(site_page.title)


def test_figures_are_loaded_images(site_page, visits):
    page = visits(site_page).page
    images = page.evaluate(
        """async () => {
            const imgs = [...document.querySelectorAll('main img')];
            imgs.forEach(img => { img.loading = 'eager'; });
            await Promise.all(imgs.map(img => img.complete ? null :
                new Promise(ok => { img.onload = img.onerror = ok; })));
            return imgs.map(img => {
                const box = img.getBoundingClientRect();
                return {src: img.currentSrc.slice(0, 80),
                        natural: [img.naturalWidth, img.naturalHeight],
                        shown: img.offsetParent !== null,
                        box: [box.width, box.height]};
            });
        }"""
    )
    broken = [i for i in images if 0 in i["natural"]]
    assert not broken, f"images that did not load: {broken}"
    empty = [i for i in images if i["shown"] and 0 in i["box"]]
    assert not empty, f"images drawn with no size: {empty}"


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs) -> None:
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)


_IDS: dict[str, set[str]] = {}


def _ids_of(path) -> set[str]:
    key = str(path)
    if key not in _IDS:
        parser = _Ids()
        parser.feed(path.read_text(errors="replace"))
        _IDS[key] = parser.ids
    return _IDS[key]


def test_internal_links_resolve(site_page, visits, base_url):
    page = visits(site_page).page
    hrefs = page.evaluate(
        "() => [...document.querySelectorAll('a[href]')]"
        ".map(a => a.getAttribute('href'))"
    )
    here = base_url + site_page.path
    problems = []
    for href in set(hrefs):
        url = urljoin(here, href)
        parts = urlparse(url)
        if not url.startswith(base_url) or parts.scheme not in ("http",):
            continue
        target = SITE / unquote(parts.path[1:])
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            problems.append(f"{href}: no {target.relative_to(SITE)}")
        elif parts.fragment and target.suffix == ".html":
            if unquote(parts.fragment) not in _ids_of(target):
                problems.append(f"{href}: no #{parts.fragment} there")
    assert not problems, "\n".join(sorted(problems))


def test_colab_button_opens_this_chapter(site_page, visits):
    if site_page.colab is None:
        pytest.skip("not a notebook: no launch button")
    links = visits(site_page).page.evaluate(
        "() => [...document.querySelectorAll('a[href*=\"colab.research\"]')]"
        ".map(a => a.href)"
    )
    assert links, "no Colab launch link"
    assert set(links) == {site_page.colab}


def test_no_javascript_error_of_its_own(site_page, visits):
    visit = visits(site_page)
    assert not visit.own_errors, "\n".join(visit.own_errors)


OVERFLOW = """() => {
    const article = document.querySelector('article.bd-article')
        || document.querySelector('main');
    const limit = article.getBoundingClientRect().right;
    const describe = el => el.tagName + ' '
        + Math.round(el.getBoundingClientRect().right)
        + '>' + Math.round(limit)
        + ' (scroll ' + el.scrollWidth + '/' + el.clientWidth + '): '
        + el.innerText.split('\\n')[0].slice(0, 70);
    const shown = el => el.offsetParent !== null;
    const result = {inputs: [], beyond: [], outputs: [],
                    page: document.documentElement.scrollWidth
                          - window.innerWidth};
    for (const el of article.querySelectorAll('div.cell_input pre')) {
        if (shown(el) && el.scrollWidth > el.clientWidth + 1)
            result.inputs.push(describe(el));
    }
    for (const el of article.querySelectorAll(
            'pre, table, img, .ea-explorer, div.cell')) {
        if (shown(el) && el.getBoundingClientRect().right > limit + 1)
            result.beyond.push(describe(el));
    }
    for (const el of article.querySelectorAll('div.cell_output pre')) {
        if (shown(el) && el.scrollWidth > el.clientWidth + 1)
            result.outputs.push(describe(el));
    }
    return result;
}"""

# Wide text outputs (timing tables, long log lines) scroll inside their own
# box without moving the page: reported at the end of the run, not failed.
WIDE_OUTPUTS: list[str] = []


def test_code_and_tables_fit_at_desktop_width(site_page, visits):
    found = visits(site_page).page.evaluate(OVERFLOW)
    assert found["page"] <= 1, f"the page scrolls sideways by {found['page']}"
    assert not found["inputs"], (
        "code cells that scroll sideways:\n" + "\n".join(found["inputs"])
    )
    assert not found["beyond"], "wider than the article:\n" + "\n".join(
        found["beyond"]
    )
    WIDE_OUTPUTS.extend(f"{site_page.entry}: {o}" for o in found["outputs"])


def test_usable_at_phone_width(site_page, visits):
    page = visits(site_page, "phone").page
    width = page.evaluate("() => window.innerWidth")
    scroll = page.evaluate("() => document.documentElement.scrollWidth")
    assert scroll <= width + 1, f"the page scrolls sideways: {scroll}px"
    heading = page.locator("article.bd-article h1").first
    assert heading.is_visible()
    box = heading.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= width + 1
    prose = page.evaluate(
        """() => [...document.querySelectorAll('main p')]
            .filter(p => p.offsetParent !== null && !p.closest('table'))
            .map(p => [p.getBoundingClientRect().right,
                       parseFloat(getComputedStyle(p).fontSize)])"""
    )
    assert prose, "no paragraph shown"
    assert max(right for right, _ in prose) <= width + 1
    assert min(size for _, size in prose) >= 12
    # the table of contents stays reachable: a button opens the sidebar
    toggle = page.locator(".primary-toggle:visible")
    assert toggle.count() >= 1, "no button to open the navigation"
    toggle.first.click()
    link = page.locator(
        "dialog[open] a.reference:visible, "
        ".bd-sidebar-primary a.reference:visible"
    )
    link.first.wait_for(state="visible", timeout=5000)
    box = link.first.bounding_box()
    assert box and 0 <= box["x"] < width, "the navigation opens off-screen"
    page.keyboard.press("Escape")  # close it again


def test_maths_is_typeset(site_page, visits):
    if not mathjax_available():
        pytest.skip(
            "no local MathJax (run `make mathjax`; needs npm): the site "
            "loads it from a CDN that an offline run cannot reach"
        )
    visit = visits(site_page)
    maths = visit.page.locator("main .math").count()
    if maths == 0:
        assert "$" not in site_page.source.read_text().replace("\\$", "")
        return  # no maths on this page: Sphinx does not load MathJax
    assert visit.mathjax, "MathJax did not start"
    raw = visit.page.evaluate(
        r"""() => [...document.querySelectorAll('main .math')]
            .map(el => el.textContent)
            .filter(t => t.includes('\\(') || t.includes('\\['))"""
    )
    assert not raw, f"untypeset maths: {raw[:3]}"
    text = visit.page.locator("main").inner_text()
    assert "\\(" not in text and "\\[" not in text
    typeset = visit.page.evaluate(
        "() => document.querySelectorAll('main mjx-container').length"
    )
    assert typeset >= maths, f"{maths} formulas, {typeset} typeset"


def _has_explorer(page) -> bool:
    built = SITE / page.path
    return built.exists() and 'class="ea-explorer"' in built.read_text()


EXPLORER_PAGES = [p for p in site_pages() if _has_explorer(p)]


def test_some_chapters_have_page_explorers():
    assert EXPLORER_PAGES, "no page shows a static_explorer"


@pytest.mark.parametrize(
    "explorer_page", EXPLORER_PAGES, ids=[p.entry for p in EXPLORER_PAGES]
)
def test_explorer_changes_its_picture(explorer_page, browser, base_url):
    from site_tools import DESKTOP

    from .conftest import open_page

    visit = open_page(browser, base_url, explorer_page.path, DESKTOP)
    page = visit.page
    try:
        explorers = page.locator(".ea-explorer")
        assert explorers.count() >= 1
        for e in range(explorers.count()):
            root = explorers.nth(e)
            root.scroll_into_view_if_needed()
            img = root.locator("img.ea-frame")
            for control in root.locator("[data-name]").all():
                before = img.get_attribute("src")
                if control.evaluate("el => el.tagName") == "SELECT":
                    options = control.locator("option").count()
                    current = int(control.input_value())
                    control.select_option(str((current + 1) % options))
                else:
                    control.focus()
                    low = control.input_value() == control.get_attribute("max")
                    page.keyboard.press("Home" if low else "End")
                after = img.get_attribute("src")
                name = control.get_attribute("data-name")
                assert after != before, f"moving {name} kept the picture"
                size = img.evaluate(
                    "async el => { await el.decode(); "
                    "return [el.naturalWidth, el.naturalHeight]; }"
                )
                assert 0 not in size, f"frame after {name}: {size}"
        assert not visit.own_errors, visit.own_errors
    finally:
        page.context.close()


def test_footer_names_both_licences(visits):
    page = visits(site_pages()[0]).page
    text = page.locator("footer.bd-footer-content").inner_text()
    assert re.search(r"\bMIT\b", text) and "CC BY 4.0" in text
