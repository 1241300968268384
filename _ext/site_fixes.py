"""Two fixes for what readers' browsers log on every page (the browser suite,
tests/browser, fails on a page's own JavaScript errors):

- sphinx-thebe 0.3.1 and sphinx-togglebutton add their inline scripts
  once per ``env-before-read-docs`` event, which this build emits twice; the
  second ``const THEBE_JS_URL`` is a SyntaxError: keep one copy of each
  script.
- pydata-sphinx-theme 0.17 writes the reader's colour mode from a template
  variable ``default_mode`` that nothing sets, then logs "Got invalid theme
  mode": default it to ``auto`` (follow the reader's system setting).

And one fix for phones: the book theme's and pydata's scripts attach the
sidebar buttons' handlers to the *first* ``.primary-toggle`` (and
``.secondary-toggle``) of the page, which is the hidden header's; the
visible buttons above the article did nothing, so on a phone the table of
contents could not be opened. Their clicks are passed on to the first.
Long inline code wraps on a phone (static/site_fixes.css).
"""

from __future__ import annotations

import pathlib


def _page_context(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if scripts:
        seen = set()
        unique = []
        for script in scripts:
            attributes = getattr(script, "attributes", {}) or {}
            key = (
                getattr(script, "filename", None) or "",
                tuple(sorted((k, str(v)) for k, v in attributes.items())),
            )
            if key not in seen:
                seen.add(key)
                unique.append(script)
        scripts[:] = unique
    if not context.get("default_mode"):
        context["default_mode"] = "auto"


_FORWARD_TOGGLES = """
document.addEventListener("DOMContentLoaded", function () {
  [".primary-toggle", ".secondary-toggle"].forEach(function (selector) {
    var all = document.querySelectorAll(selector);
    for (var i = 1; i < all.length; i++) {
      all[i].addEventListener("click", function (event) {
        event.preventDefault();
        event.stopImmediatePropagation();
        all[0].click();
      });
    }
  });
});
"""


def _static_path(app) -> None:
    app.config.html_static_path.append(
        str(pathlib.Path(__file__).parent / "static")
    )


def setup(app):
    app.add_js_file(None, body=_FORWARD_TOGGLES)
    app.connect("builder-inited", _static_path)
    app.add_css_file("site_fixes.css")
    app.connect("html-page-context", _page_context, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
