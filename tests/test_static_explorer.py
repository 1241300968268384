"""The kernel-free explorer: frames, controls and errors (the browser suite
moves its slider on the built site)."""

from __future__ import annotations

import base64
import io
import json
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from efficient_attention.viz.static_explorer import (  # noqa: E402
    MAX_FRAMES,
    attention_map_explorer_page,
    explorer_html,
    figure_to_png_base64,
    image_frames,
    low_rank_explorer_page,
    pruning_explorer_page,
    quantization_explorer_page,
    static_explorer,
)


def draw(width, colour="red"):
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.bar([0], [width], color=colour)
    return fig


def test_a_frame_is_a_png_and_the_figure_is_closed():
    fig = draw(1)
    text = figure_to_png_base64(fig, dpi=20)
    assert base64.b64decode(text).startswith(b"\x89PNG")
    assert not plt.fignum_exists(fig.number)


def test_one_frame_per_combination_in_product_order():
    calls = []

    def record(width, colour):
        calls.append((width, colour))
        return draw(width, colour)

    page = static_explorer(
        record, width=[1, 2, 3], colour=["red", "blue"], dpi=20
    ).data
    assert calls == [(w, c) for w in (1, 2, 3) for c in ("red", "blue")]
    frames = re.search(r"var frames = (\[.*?\]);", page).group(1)
    assert frames.count("iVBOR") == 6  # base64 of the PNG signature
    # a number gets a slider over its indices, a string a menu
    assert 'type="range" data-name="width" min="0" max="2"' in page
    assert '<select data-name="colour"' in page
    assert page.count("<option") == 2


def test_the_initial_values_pick_the_first_picture():
    frames = [f"F{i}" for i in range(6)]
    page = explorer_html(
        frames,
        {"width": [1, 2, 3], "colour": ["red", "blue"]},
        initial={"width": 3, "colour": "blue"},
    )
    assert 'src="data:image/png;base64,F5"' in page
    assert 'value="2"' in page and '<option value="1" selected>' in page


def test_the_same_frames_give_the_same_html():
    a = explorer_html(["A", "B"], {"w": [1, 2]}, caption="x")
    b = explorer_html(["A", "B"], {"w": [1, 2]}, caption="x")
    c = explorer_html(["A", "C"], {"w": [1, 2]}, caption="x")
    assert a == b
    assert re.search(r'id="(ea-explorer-\w+)"', a).group(1) != re.search(
        r'id="(ea-explorer-\w+)"', c
    ).group(1)


def test_captions_and_names_are_escaped():
    page = explorer_html(["A"], {"<w>": ["<b>"]}, caption="a < b")
    assert "a &lt; b" in page and "&lt;b&gt;" in page


@pytest.mark.parametrize(
    "parameters, message",
    [
        ({}, "at least one parameter"),
        ({"w": []}, "has no values"),
        ({"w": "abc"}, "must be a list"),
        ({"w": list(range(MAX_FRAMES + 1))}, "more than"),
    ],
)
def test_bad_parameters_are_named(parameters, message):
    with pytest.raises(ValueError, match=message):
        static_explorer(draw, **parameters)


def test_frame_count_and_initial_values_are_checked():
    with pytest.raises(ValueError, match="expected 2 frames"):
        explorer_html(["A"], {"w": [1, 2]})
    with pytest.raises(ValueError, match="initial w=5"):
        explorer_html(["A", "B"], {"w": [1, 2]}, initial={"w": 5})


def frame_list(page: str) -> list[str]:
    return json.loads(re.search(r"var frames = (\[.*?\]);", page).group(1))


def test_image_frames_repaint_only_the_image():
    import numpy as np

    fig, ax = plt.subplots(figsize=(2, 2))
    image = ax.imshow(np.zeros((4, 4)), cmap="viridis")
    ax.set_title("fixed text")
    a = np.arange(16.0).reshape(4, 4)
    frames = image_frames(image, [a, a * 10, a.T], dpi=40)
    assert not plt.fignum_exists(fig.number)
    pictures = [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(f))).convert("RGB"))
        for f in frames
    ]
    # colours are scaled to each array's range, as imshow does
    assert np.array_equal(pictures[0], pictures[1])
    assert not np.array_equal(pictures[0], pictures[2])
    # outside the image (the title) nothing changes
    assert np.array_equal(pictures[0][:5], pictures[2][:5])
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="shaped like"):
        image_frames(ax.imshow(np.zeros((4, 4))), [np.zeros((3, 4))])


def test_chapter_pages_hold_one_frame_per_combination():
    import torch

    g = torch.Generator().manual_seed(0)
    query, key = torch.randn(2, 16, 4, generator=g, dtype=torch.float64)
    page = low_rank_explorer_page(query, key, sizes=[2, 16]).data
    assert len(frame_list(page)) == 3 * 2
    assert '<select data-name="method"' in page and "width:600px" in page
    weights = torch.randn(8, 16, generator=g)
    page = quantization_explorer_page(weights, bits=[2, 4]).data
    assert len(frame_list(page)) == 2 * 3
    page = pruning_explorer_page(weights, amounts=[0.0, 0.5]).data
    assert len(frame_list(page)) == 2
    assert 'type="range" data-name="amount"' in page
    attentions = [
        torch.softmax(torch.randn(1, 3, 5, 5, generator=g), -1)
        for _ in range(2)
    ]
    page = attention_map_explorer_page(attentions, list("abcde")).data
    assert len(frame_list(page)) == 2 * 3
    assert 'data-name="layer" min="0" max="1" step="1" value="1"' in page


def test_draw_attention_map_checks_its_indices():
    import torch

    from efficient_attention.viz.widgets import draw_attention_map

    attentions = [torch.full((1, 2, 3, 3), 1 / 3)]
    fig = draw_attention_map(attentions, ["a", "b", "c"], 0, 1)
    assert fig.axes[0].get_title() == "layer 1, head 2"
    plt.close(fig)
    with pytest.raises(ValueError, match="layer must be in"):
        draw_attention_map(attentions, ["a", "b", "c"], 1, 0)
    with pytest.raises(ValueError, match="head must be in"):
        draw_attention_map(attentions, ["a", "b", "c"], 0, 2)
    with pytest.raises(ValueError, match="2 tokens"):
        draw_attention_map(attentions, ["a", "b"], 0, 0)


def test_the_hierarchical_page_has_a_frame_per_setting(monkeypatch):
    from efficient_attention import widgets
    from efficient_attention.viz.static_explorer import (
        hierarchical_explorer_page,
    )

    calls = []

    def fake_draw(length, *, block_size, levels, top_k):
        calls.append((length, block_size, levels, top_k))
        if levels == 4:
            raise ValueError("levels=4 does not fit")
        return draw(block_size)

    monkeypatch.setattr(widgets, "draw_hierarchical", fake_draw)
    open_before = set(plt.get_fignums())
    page = hierarchical_explorer_page(length=32).data
    frames = re.search(r"var frames = (\[.*?\]);", page).group(1)
    assert frames.count("iVBOR") == len(calls) == 3 * 4 * 4 <= MAX_FRAMES
    assert {c[0] for c in calls} == {32}
    for name in ("block_size", "levels", "top_k"):
        assert f'type="range" data-name="{name}"' in page
    # every frame's figure is closed
    assert set(plt.get_fignums()) <= open_before


# -- issue 22 ---------------------------------------------------------------


def test_a_label_cannot_end_the_script():
    # a label holding </script> ended the page's script early
    evil = "</script><script>alert(1)</script>"
    page = explorer_html(["AAAA", "BBBB"], {"label": [evil, "plain & <b>"]})
    assert page.count("</script>") == 1 and "<script>alert" not in page
    labels = re.search(r"var labels = (\[.*?\]);\n", page).group(1)
    assert json.loads(labels) == [[evil, "plain & <b>"]]


def test_an_initial_value_for_no_parameter_is_an_error():
    # it was silently ignored (the docstring promised an error)
    with pytest.raises(ValueError, match=r"initial names \['widht'\]"):
        explorer_html(["AAAA"], {"width": [1]}, initial={"widht": 1})
    with pytest.raises(ValueError, match="initial"):
        static_explorer(draw, width=[1, 2], initial={"colour": "red"})


def test_a_draw_that_returns_no_figure_is_named():
    def forgets_to_return(width):
        draw(width)

    with pytest.raises(ValueError, match="draw must return a matplotlib"):
        static_explorer(forgets_to_return, width=[1, 2])
    plt.close("all")


def test_numpy_numbers_get_a_slider():
    import numpy as np

    page = static_explorer(draw, width=[np.float32(1), np.int64(2)], dpi=20)
    assert 'type="range" data-name="width"' in page.data
