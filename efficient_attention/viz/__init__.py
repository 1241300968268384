"""Pictures: static plots, live widgets, and explorers for the rendered site.

``plotting`` draws masks, heat maps and timing curves with matplotlib;
``widgets`` builds the ipywidgets explorers a reader plays with in a
running notebook; ``static_explorer`` turns frames drawn in advance into a
self-contained HTML slider for the site. Imported on first use:
``ea.plotting``, ``ea.widgets``.
"""
