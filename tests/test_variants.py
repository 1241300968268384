"""The registry of attention variants (efficient_attention.variants): its
rules, its defaults, and what every consumer derives from it. The property
suite runs every registered variant (tests/properties/)."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest
import torch

import efficient_attention as ea
from efficient_attention import masks, variants, widgets
from efficient_attention.benchmark import cli as benchmark_cli

BOOK = pathlib.Path(__file__).resolve().parents[1] / "book"


def chapter_text(chapter: str) -> str:
    cells = json.loads((BOOK / f"{chapter}.ipynb").read_text())["cells"]
    return "\n".join("".join(cell["source"]) for cell in cells)


def test_every_variant_is_shown_in_a_chapter_that_names_it():
    for name in variants.names():
        variant = variants.get(name)
        text = chapter_text(variant.chapter)
        called = variant.function.__name__ if variant.function else name
        assert name in text or called in text, (name, variant.chapter)


def test_peers_and_families_name_what_is_registered():
    assert list(variants.families()) == list(variants.FAMILIES)
    assert sum(map(len, variants.families().values())) == len(
        variants.REGISTRY
    )
    for name in variants.names():
        variant = variants.get(name)
        for peer in variant.peers:
            assert peer in variants.REGISTRY, (name, peer)
        assert (variant.function is None) == (variant.peer is not None) or (
            name == "sdpa"
        )
    assert variants.names(causal=True) == [
        "sdpa", "dense", "sliding-window", "performer",
    ]  # fmt: skip


def test_the_command_lines_defaults_are_the_registrys():
    args = benchmark_cli.build_parser().parse_args([])
    assert benchmark_cli.settings_of(args) == variants.Settings()
    args = benchmark_cli.build_parser().parse_args(
        "--global-blocks 1 --random-blocks 0 --window 5".split()
    )
    settings = benchmark_cli.settings_of(args)
    assert (settings.global_blocks, settings.random_blocks) == (1, 0)
    assert settings.window == 5


def test_the_widgets_draw_the_registrys_bigbird():
    layout = widgets.sparse_layout("bigbird", 16)
    settings = variants.Settings()
    expected = variants.sparse_layout(
        "bigbird", 16 * settings.block_size, settings
    )
    assert layout.equal(expected)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"family": "tiled"}, "family must be one of"),
        ({"options": ("window", "wndow")}, "options ['wndow']"),
    ],
)
def test_a_variant_with_a_wrong_field_is_refused(change, message):
    base = variants.get("sliding-window")
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        dataclasses.replace(base, **change)


def test_names_are_registered_once():
    with pytest.raises(ValueError, match="registered already"):
        variants.register(variants.get("dense"))
    toy = dataclasses.replace(variants.get("dense"), name="all")
    with pytest.raises(ValueError, match="registered already"):
        variants.register(toy)
    with pytest.raises(KeyError, match="registered: sdpa, dense"):
        variants.get("densse")


def test_build_says_what_a_variant_needs():
    with pytest.raises(ValueError, match="needs a window"):
        variants.build("sliding-window", variants.Settings())
    with pytest.raises(ValueError, match="does not take causal"):
        variants.build("nystrom", variants.Settings(causal=True))
    problem = variants.setting_problem(
        "nystrom", variants.Settings(landmarks=40), 32
    )
    assert "landmarks 40 is more than the 32 tokens" in problem
    assert variants.setting_problem("dense", variants.Settings(), 1) is None


def test_a_causal_window_is_the_window_to_the_left():
    settings = variants.Settings(window=2, causal=True)
    q, k, v = ea.benchmark.attention_inputs(12, heads=2, head_dim=4)
    out = variants.build("sliding-window", settings)(q, k, v)
    window = masks.sliding_window((2, 0))
    expected = ea.dense_attention(
        q, k, v, attn_mask=masks.create_mask(window, 12, 12)
    )
    torch.testing.assert_close(out, expected)
