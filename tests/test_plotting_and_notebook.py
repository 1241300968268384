"""Figures, widgets and notebook helpers."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import efficient_attention as ea  # noqa: E402
from efficient_attention import (  # noqa: E402
    masks,
    notebook,
    plotting,
    widgets,
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_plot_mask_draws_the_mask_and_its_density():
    mask = masks.create_mask(masks.causal, 6, 6)
    ax = plotting.plot_mask(mask, title="causal")
    assert np.array_equal(ax.images[0].get_array(), mask.numpy())
    assert "58% of pairs" in ax.get_title()  # 21 of 36


def test_plot_mask_rejects_batched_masks():
    with pytest.raises(
        ValueError, match=r"must be 2-D \(L, S\); got shape \(2, 1, 4, 4\)"
    ):
        plotting.plot_mask(masks.create_mask(masks.causal, 4, 4, batch=2))


def test_gallery_has_one_visible_panel_per_mask():
    patterns = masks.example_patterns()
    fig = plotting.plot_mask_gallery(
        {n: masks.create_mask(m, 8, 8) for n, m in patterns.items()}, ncols=3
    )
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().split("\n")[0] for ax in visible] == list(patterns)


def test_heatmap_shows_the_weights():
    weights = torch.softmax(torch.randn(5, 7), -1)
    ax = plotting.plot_heatmap(weights, title="w")
    assert np.allclose(ax.images[0].get_array(), weights.numpy())


def test_plot_scaling_one_line_per_variant_plus_guides():
    records = [
        {"variant": v, "L": L, "median_s": L * (1 if v == "a" else L) * 1e-6}
        for v in ("a", "b")
        for L in (64, 128, 256)
    ]
    records.append({"variant": "b", "L": 512, "median_s": None})
    ax = plotting.plot_scaling(records, guides=(1, 2))
    assert [line.get_label() for line in ax.lines[:2]] == ["a", "b"]
    assert (
        len(ax.lines) == 4
        and ax.get_xscale() == "log"
        and ax.get_yscale() == "log"
    )
    assert list(ax.lines[1].get_xdata()) == [
        64,
        128,
        256,
    ]  # the missing value is skipped


def test_draw_pattern_and_explorer():
    fig = widgets.draw_pattern("dilated window", 16, window=2, dilation=3)
    expected = masks.create_mask(masks.dilated_sliding_window(2, 3), 16, 16)
    assert np.array_equal(fig.axes[0].images[0].get_array(), expected.numpy())
    with pytest.raises(ValueError, match="unknown pattern 'diagonal'"):
        widgets.draw_pattern("diagonal", 16)
    explorer = widgets.mask_explorer()
    pattern = explorer.children[0].children[0]
    pattern.value = "block local"  # re-renders through the widget's callback
    assert "block local" in pattern.options


def test_source_markdown_shows_the_package_function():
    text = notebook.source_markdown(ea.dense_attention)
    assert "efficient_attention/attention/dense.py" in text
    assert "def dense_attention(" in text and text.count("```") == 2
    with pytest.raises(ValueError, match="cannot show the source"):
        notebook.source_markdown(len)


def test_setup_notebook_seeds_everything():
    ea.setup_notebook(seed=3)
    first = torch.rand(3), np.random.rand(3)
    ea.setup_notebook(seed=3)
    assert torch.equal(first[0], torch.rand(3)) and np.array_equal(
        first[1], np.random.rand(3)
    )
    assert plt.rcParams["axes.spines.top"] is False


def test_pick_device():
    assert ea.pick_device("cpu").type == "cpu"
    assert ea.pick_device().type == (
        "cuda" if torch.cuda.is_available() else "cpu"
    )
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            ea.pick_device("cuda")
