"""Figures, widgets and notebook helpers."""

from __future__ import annotations

import math

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


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16]
)
@pytest.mark.parametrize("blocked", ["-inf", "lowest"])
def test_plot_mask_draws_an_additive_mask_like_its_bool_mask(dtype, blocked):
    mask = masks.create_mask(masks.causal, 6, 6)
    value = -math.inf if blocked == "-inf" else torch.finfo(dtype).min
    additive = torch.zeros(6, 6, dtype=dtype).masked_fill(~mask, value)
    ax = plotting.plot_mask(additive, title="causal")
    assert np.array_equal(ax.images[0].get_array(), mask.numpy())
    assert "58% of pairs" in ax.get_title()


def test_plot_mask_draws_an_integer_mask_of_zeros_and_ones():
    mask = masks.create_mask(masks.causal, 6, 6)
    ax = plotting.plot_mask(mask.long())
    assert np.array_equal(ax.images[0].get_array(), mask.numpy())


@pytest.mark.parametrize(
    "weights,message",
    [
        (torch.full((4, 4), 0.25), "a float mask is drawn as an additive"),
        (torch.eye(4), "a float mask is drawn as an additive"),
        (torch.zeros(4, 4).fill_diagonal_(math.nan), "additive"),
        (torch.arange(16).view(4, 4), "integer mask must hold only 0 and 1"),
        (
            torch.ones(4, 0, dtype=torch.bool),
            r"mask is empty \(shape \(4, 0\)",
        ),
        (torch.ones(4, 4, device="meta"), "meta device"),
    ],
)
def test_plot_mask_refuses_what_is_not_a_mask(weights, message):
    with pytest.raises(ValueError, match=message):
        plotting.plot_mask(weights)


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


def test_heatmaps_side_by_side_can_share_one_colour_scale():
    _, (left, right) = plt.subplots(1, 2)
    plotting.plot_heatmap(torch.full((3, 3), 0.2), ax=left, vmax=0.8)
    plotting.plot_heatmap(torch.eye(3) * 0.8, ax=right, vmax=0.8)
    assert left.images[0].get_clim() == right.images[0].get_clim() == (0, 0.8)
    own = plotting.plot_heatmap(torch.eye(3) * 0.5).images[0].get_clim()
    assert own == (0, 0.5)  # without vmax: its own range


def test_a_log_heatmap_shows_small_weights_and_leaves_dropped_pairs_white():
    weights = torch.tensor([[0.9, 1e-3, 0.0], [0.5, 0.5, 0.0]])
    image = plotting.plot_heatmap(weights, log=True, vmax=1.0).images[0]
    assert isinstance(image.norm, matplotlib.colors.LogNorm)
    assert image.get_clim() == pytest.approx((1e-4, 1.0))
    drawn = image.get_array()
    assert drawn.mask.tolist() == [[False, False, True], [False, False, True]]
    assert tuple(image.cmap.get_bad()[:3]) == (1.0, 1.0, 1.0)  # white
    # a weight of 1e-3 gets a colour of its own, well above the lowest
    assert image.norm(1e-3) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="log=True"):
        plotting.plot_heatmap(torch.zeros(2, 2), log=True)
    for flag in ("log", "colorbar"):  # a truthy string is not a bool
        with pytest.raises(ValueError, match=f"{flag} must be True or False"):
            plotting.plot_heatmap(weights, **{flag: "yes"})


@pytest.mark.parametrize("vmax", [0, -1.0, float("inf"), True, "1"])
def test_heatmap_names_a_bad_vmax(vmax):
    with pytest.raises(ValueError, match="vmax must be"):
        plotting.plot_heatmap(torch.eye(3), vmax=vmax)


def test_heatmap_draws_bfloat16_the_package_returns():
    q = torch.randn(6, 8).bfloat16()
    weights = ea.effective_attention(ea.dense_attention, q, q)
    assert weights.dtype == torch.bfloat16
    ax = plotting.plot_heatmap(weights)
    assert np.array_equal(ax.images[0].get_array(), weights.float().numpy())


@pytest.mark.parametrize(
    "weights,message",
    [
        (torch.ones(3, 0), "empty"),
        (torch.ones(3, 3, dtype=torch.complex64), "real numbers"),
        (torch.ones(3, 3, device="meta"), "meta device"),
    ],
)
def test_heatmap_refuses_what_it_cannot_draw(weights, message):
    with pytest.raises(ValueError, match=message):
        plotting.plot_heatmap(weights)


def test_gallery_and_scaling_bad_input():
    mask = masks.create_mask(masks.causal, 4, 4)
    with pytest.raises(ValueError, match="ncols must be a positive int"):
        plotting.plot_mask_gallery({"causal": mask}, ncols=0)
    with pytest.raises(ValueError, match="masks must map names to masks"):
        plotting.plot_mask_gallery([mask])
    with pytest.raises(ValueError, match="at least one record"):
        plotting.plot_scaling([])
    with pytest.raises(ValueError, match="no record has the key y='median'"):
        plotting.plot_scaling(
            [{"variant": "a", "L": 8, "median_s": 1.0}], y="median"
        )


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


def test_draw_pattern():
    fig = widgets.draw_pattern("dilated window", 16, window=2, dilation=3)
    expected = masks.create_mask(masks.dilated_sliding_window(2, 3), 16, 16)
    assert np.array_equal(fig.axes[0].images[0].get_array(), expected.numpy())
    with pytest.raises(ValueError, match="unknown pattern 'diagonal'"):
        widgets.draw_pattern("diagonal", 16)
    fig = widgets.draw_pattern("causal", np.int64(5))
    assert fig.axes[0].images[0].get_array().shape == (5, 5)


def test_explorer_redraws_with_the_controls_values(monkeypatch):
    drawn = []

    def record(**values):
        drawn.append(values)
        return plt.figure()

    monkeypatch.setattr(widgets, "draw_pattern", record)
    explorer = widgets.mask_explorer(length=24)
    pattern, length, window = explorer.children[0].children[:3]
    assert drawn[-1]["name"] == "full" and drawn[-1]["length"] == 24
    pattern.value = "block local"
    assert drawn[-1]["name"] == "block local"
    window.value = 5
    assert drawn[-1]["window"] == 5 and drawn[-1]["name"] == "block local"
    length.value = 64
    assert drawn[-1]["length"] == 64


@pytest.mark.parametrize("length", [3, 300])
def test_explorer_starts_at_the_length_asked_for(length, monkeypatch):
    monkeypatch.setattr(widgets, "draw_pattern", lambda **v: plt.figure())
    slider = widgets.mask_explorer(length=length).children[0].children[1]
    assert slider.value == length


def test_source_markdown_shows_the_package_function():
    text = notebook.source_markdown(ea.dense_attention)
    assert "efficient_attention/attention/dense.py" in text
    assert "def dense_attention(" in text and text.count("```") == 2
    with pytest.raises(ValueError, match="cannot show the source"):
        notebook.source_markdown(len)


def test_glue_outside_a_kernel_does_nothing_and_prints_nothing(capsys):
    assert notebook.glue("speedup", 2.5) is None
    assert capsys.readouterr() == ("", "")


def test_glue_in_a_kernel_records_the_value_without_showing_it(monkeypatch):
    import IPython
    import myst_nb

    calls = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    monkeypatch.setattr(
        myst_nb, "glue", lambda *args, **kwargs: calls.append((args, kwargs))
    )
    assert notebook.glue("sdpa-ms", 12.5) is None  # nothing to display
    notebook.glue("ratio", np.float64(3.25))
    notebook.glue("error", torch.tensor([0.5]))
    assert calls == [
        (("sdpa-ms", 12.5), {"display": False}),
        (("ratio", 3.25), {"display": False}),
        (("error", 0.5), {"display": False}),
    ]
    assert all(type(args[1]) is float for args, _ in calls)


@pytest.mark.parametrize("name", ["", "two words", "a.b", 3, None])
def test_glue_names_a_name_the_markdown_cannot_use(name):
    with pytest.raises(ValueError, match="glue name must be"):
        notebook.glue(name, 1.0)


def test_setup_notebook_seeds_everything():
    ea.setup_notebook(seed=3)
    first = torch.rand(3), np.random.rand(3)
    ea.setup_notebook(seed=3)
    assert torch.equal(first[0], torch.rand(3)) and np.array_equal(
        first[1], np.random.rand(3)
    )
    assert plt.rcParams["axes.spines.top"] is False


@pytest.mark.parametrize("seed", [np.int64(3), np.uint32(3), 3])
def test_setup_notebook_takes_any_integral_seed(seed):
    ea.setup_notebook(seed=seed)
    first = torch.rand(2)
    ea.setup_notebook(seed=3)
    assert torch.equal(first, torch.rand(2))


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, "0", None, True])
def test_setup_notebook_bad_seed(seed):
    with pytest.raises(
        ValueError, match=r"seed must be an int in \[0, 2\*\*32\)"
    ):
        ea.setup_notebook(seed=seed)


def pretend(monkeypatch, *, cuda: int = 0, mps: bool = False) -> None:
    """Make this machine look as if it had ``cuda`` GPUs and MPS or not."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def test_pick_device_prefers_cuda_when_there_is_one(monkeypatch):
    pretend(monkeypatch, cuda=2)
    assert ea.pick_device() == torch.device("cuda")
    assert ea.pick_device("cuda:1") == torch.device("cuda:1")
    assert ea.pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="has 2 CUDA device"):
        ea.pick_device("cuda:2")
    pretend(monkeypatch, cuda=0)
    assert ea.pick_device() == torch.device("cpu")
    assert ea.pick_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize(
    "prefer,message",
    [
        ("cuda", "CUDA is not available"),
        ("cuda:0", "CUDA is not available"),
        ("mps", "MPS is not available"),
        ("meta", "prefer='meta' is not a device to compute on"),
        ("xla", "prefer='xla' is not a device to compute on"),
        ("gpu", "prefer='gpu' is not a device name"),
        ("", "prefer='' is not a device name"),
        (0, "prefer must be a device name"),
    ],
)
def test_pick_device_refuses_what_is_not_here(prefer, message, monkeypatch):
    pretend(monkeypatch, cuda=0, mps=False)
    with pytest.raises(ValueError, match=message):
        ea.pick_device(prefer)


def test_pick_device_gives_mps_where_there_is_one(monkeypatch):
    pretend(monkeypatch, cuda=0, mps=True)
    assert ea.pick_device("mps") == torch.device("mps")


def test_pareto_front_keeps_exactly_the_unbeaten_points():
    cost = [10, 5, 5, 2, 8, 2]
    quality = [0.9, 0.85, 0.80, 0.70, 0.85, 0.70]
    # (5, 0.80) loses to (5, 0.85); (8, 0.85) to (5, 0.85); the two equal
    # points (2, 0.70) beat nothing of each other, so both stay.
    assert plotting.pareto_front(cost, quality) == [
        True, True, False, True, False, True]
    assert plotting.pareto_front([1.0], [0.5]) == [True]
    with pytest.raises(ValueError, match="one value per point"):
        plotting.pareto_front([1, 2], [0.5])
    with pytest.raises(ValueError, match="finite"):
        plotting.pareto_front([1, math.nan], [0.5, 0.6])


def test_plot_pareto_colours_the_front_and_labels_every_point():
    ax = plotting.plot_pareto(
        ["big", "small", "worse"], [10, 2, 5], [0.9, 0.8, 0.7],
        xlabel="ms", ylabel="F1")
    colours = [tuple(c.get_facecolors()[0][:3]) for c in ax.collections]
    assert [c != colours[2] for c in colours] == [True, True, False]
    assert [t.get_text() for t in ax.texts] == ["1", "2", "3"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["1  big", "2  small", "3  worse"]
    step = ax.lines[0]
    assert list(step.get_xdata()) == [2, 10]
    with pytest.raises(ValueError, match="names"):
        plotting.plot_pareto(["a"], [1, 2], [0.1, 0.2], xlabel="x",
                             ylabel="y")
    plt.close("all")


# -- issue 22: opaque errors of the plots ----------------------------------


@pytest.mark.parametrize(
    "cost, quality, name",
    [(None, [1.0], "cost"), ([1.0], None, "quality"), ("12", [1, 2], "cost"),
     ([1.0, "x"], [1, 2], "cost")],
)  # fmt: skip
def test_pareto_front_names_what_is_no_list_of_numbers(cost, quality, name):
    with pytest.raises(ValueError, match=f"{name} must be a list of numbers"):
        plotting.pareto_front(cost, quality)


def test_plot_pareto_needs_a_point():
    with pytest.raises(ValueError, match="at least one point"):
        plotting.plot_pareto([], [], [], xlabel="ms", ylabel="F1")


@pytest.mark.parametrize(
    "record", [{"L": 8, "median_s": 1.0}, {"variant": "a", "median_s": 1.0}]
)
def test_plot_scaling_names_a_record_without_its_fields(record):
    with pytest.raises(ValueError, match="'variant' and 'L'"):
        plotting.plot_scaling([{"variant": "b", "L": 4, "median_s": 1.0},
                               record])  # fmt: skip
    plt.close("all")
