"""Peer implementations agree with the package; synthetic tasks; figures."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import efficient_attention as ea  # noqa: E402
from efficient_attention import (  # noqa: E402
    benchmark,
    masks,
    peers,
    plotting,
    tasks,
    widgets,
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize(
    "name", ["sdpa + mask", "local-attention", "longformer chunks", "natten"]
)
def test_peer_computes_the_same_window(name):
    L, w = 256, 16
    built = peers.local_peers(w, L, heads=2, head_dim=32)[name]
    if isinstance(built, str):
        pytest.skip(built)
    q, k, v = benchmark.attention_inputs(L, heads=2, head_dim=32)
    border = "shift" if name == "natten" else "clip"
    expected = ea.sliding_window_attention(q, k, v, window=w, border=border)
    torch.testing.assert_close(built(q, k, v), expected, atol=1e-5, rtol=0)


def test_peers_say_why_they_cannot_run():
    found = peers.local_peers(16, 100, heads=2, head_dim=32)
    assert "divisible" in found["local-attention"]  # 100 % 16 != 0
    assert "divisible by 2w" in found["longformer chunks"]
    with pytest.raises(peers.PeerUnavailable, match="pip install nope"):
        peers._import("nope_not_a_module", "nope")


def test_offset_copy_targets_are_the_tokens_offsets_back():
    tokens, targets = tasks.offset_copy(
        3,
        10,
        offsets=(1, 4),
        vocab=5,
        generator=torch.Generator().manual_seed(0),
    )
    assert tokens.shape == (3, 10) and targets.shape == (3, 10, 2)
    assert int(tokens.max()) < 5
    assert torch.equal(targets[:, 1:, 0], tokens[:, :-1])
    assert torch.equal(targets[:, 4:, 1], tokens[:, :-4])
    assert (targets[:, :4, 1] == tasks.IGNORE).all()
    again, _ = tasks.offset_copy(
        3,
        10,
        offsets=(1, 4),
        vocab=5,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(tokens, again)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"offsets": ()}, "at least one"),
        ({"offsets": (0,)}, r"in \[1, length=8\)"),
        ({"offsets": (8,)}, r"in \[1, length=8\)"),
        ({"offsets": (1.5,)}, "must be ints"),
        ({"vocab": 0}, "vocab must be a positive int"),
    ],
)
def test_offset_copy_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tasks.offset_copy(2, 8, **kwargs)


def test_plot_tiles_colours_computed_needed_and_wasted_pairs():
    mask = masks.create_mask(masks.sliding_window(1), 6, 6)
    ax = plotting.plot_tiles(mask, [(0, 3, 0, 4), (3, 6, 2, 6)], title="t")
    codes = np.asarray(ax.images[0].get_array())
    assert codes[0, 0] == 2  # computed and allowed
    assert codes[0, 3] == 1  # computed, outside the window
    assert codes[0, 5] == 0  # never computed
    assert codes[5, 0] == 0
    # 24 computed pairs, 16 of them needed (the 16 band pairs)
    assert "33% of computed pairs wasted" in ax.get_title()
    with pytest.raises(ValueError, match="lies outside"):
        plotting.plot_tiles(mask, [(0, 7, 0, 2)])


def test_draw_local_windows_one_panel_per_head():
    fig = widgets.draw_local_windows(
        12, [(1, 1), (2, 0)], dilations=[1, 3], border="shift"
    )
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2
    expected = masks.create_mask(masks.shifted_window((2, 0), 12, 3), 12, 12)
    assert np.array_equal(panels[1].images[0].get_array(), expected.numpy())
    with pytest.raises(ValueError, match="one dilation per window"):
        widgets.draw_local_windows(12, [(1, 1)], dilations=[1, 2])
    with pytest.raises(ValueError, match="border must be"):
        widgets.draw_local_windows(12, [(1, 1)], border="wrap")
