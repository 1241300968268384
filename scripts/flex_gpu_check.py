"""On a CUDA GPU: the package's FlexAttention path against its PyTorch path.

1. Equality: ``backend="flex"`` (what ``"auto"`` takes on CUDA) against
   ``backend="torch"`` for windows (dilated, shifted, per head, L != S,
   empty rows), block layouts and a mask function, forward and backward.
2. Speed: the sliding window and a 10% block layout against SDPA (bf16,
   12 heads of 64), through ``benchmark.compare`` (interleaved rounds).

    python scripts/flex_gpu_check.py            # prints; JSON to $OUT or .

``efficient_attention/book_data/flex-gpu-h200.json`` is one such run (an
H200, 2026-12-04).
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import efficient_attention as ea  # noqa: E402
from efficient_attention import benchmark, masks  # noqa: E402
from efficient_attention.attention import flex  # noqa: E402

DEVICE = torch.device(os.environ.get("FLEX_CHECK_DEVICE", "cuda"))
LENGTHS = [int(n) for n in os.environ.get(
    "FLEX_CHECK_LENGTHS", "4096,16384,65536").split(",")]
GENERATOR = torch.Generator().manual_seed(0)
report: dict[str, object] = {"equal": {}, "timings": []}


def random(*shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=GENERATOR).to(DEVICE, dtype)


def agree(name: str, fast: torch.Tensor, slow: torch.Tensor) -> None:
    error = (fast.float() - slow.float()).abs().max().item()
    ok = error < 1e-4
    report["equal"][name] = error
    print(f"{'ok ' if ok else 'BAD'} {name}: max |flex - torch| {error:.1e}")


def count_flex_calls() -> list[int]:
    """Count the calls that reach FlexAttention (to see what auto takes)."""
    calls, inner = [0], flex.masked_flex_attention

    def counted(*args, **kwargs):
        calls[0] += 1
        return inner(*args, **kwargs)

    flex.masked_flex_attention = counted
    return calls


def equality() -> None:
    windows = {
        "window (3, 2), L = S = 40": ((2, 3, 40, 16), 40, 16, {
            "window": (3, 2)}),
        "per-head windows, dilations, shift, L=56 S=24": (
            (1, 3, 56, 16), 24, 16, {
                "window": [(1, 1), (5, 0), (0, 7)], "dilation": [1, 2, 3],
                "border": "shift"}),
        "causal (64, 0), dilation 2, Ev 32, L = 1000": (
            (2, 4, 1000, 64), 1000, 32, {"window": (64, 0), "dilation": 2}),
        "no heads, L = 130 > S = 64 (empty rows)": ((130, 16), 64, 16, {
            "window": (2, 0)}),
    }  # fmt: skip
    calls = count_flex_calls()
    for name, (shape, S, Ev, options) in windows.items():
        q = random(*shape)
        k = random(*shape[:-2], S, shape[-1])
        v = random(*shape[:-2], S, Ev)
        fast = ea.sliding_window_attention(q, k, v, **options)  # auto
        slow = ea.sliding_window_attention(q, k, v, backend="torch", **options)
        agree(name, fast, slow)
    print(f"auto took FlexAttention in {calls[0]} of {len(windows)} calls")
    report["auto_took_flex"] = f"{calls[0]} of {len(windows)}"

    L, block = 1000, 64
    n = masks.n_blocks(L, block)
    for heads in (None, 4):
        chosen = torch.rand(heads or 1, n, n, generator=GENERATOR) < 0.1
        chosen[..., 0] = True
        layout = (chosen if heads else chosen[0]).to(DEVICE)
        q, k, v = (random(2, 4, L, 64) for _ in "qkv")
        options = {"layout": layout, "block_size": block}
        agree(f"block layout 10%, {'per head' if heads else 'shared'}",
              ea.block_sparse_attention(q, k, v, **options),
              ea.block_sparse_attention(q, k, v, backend="torch", **options))

    pattern = masks.or_masks(
        masks.sliding_window((32, 0)), masks.global_tokens([0, 100])
    )
    q, k, v = (random(1, 2, 777, 64) for _ in "qkv")
    agree("mask function: causal window 32 + 2 global tokens, L = 777",
          ea.sparse_attention(q, k, v, pattern=pattern),
          ea.sparse_attention(q, k, v, pattern=pattern, backend="torch"))

    grads, inputs = [], [random(1, 4, 512, 64) for _ in "qkv"]
    for backend in ("auto", "torch"):
        q, k, v = (t.clone().requires_grad_() for t in inputs)
        out = ea.sliding_window_attention(
            q, k, v, window=(32, 32), backend=backend
        )
        (out * torch.linspace(-1, 1, 64, device=DEVICE)).sum().backward()
        grads.append(torch.cat([t.grad.flatten() for t in (q, k, v)]))
    agree("backward, window (32, 32), L = 512", grads[0], grads[1])


def speed() -> None:
    heads, head_dim, w, block = 12, 64, 128, 64
    for L in LENGTHS:
        q, k, v = (random(1, heads, L, head_dim, dtype=torch.bfloat16)
                   for _ in "qkv")  # fmt: skip
        n = masks.n_blocks(L, block)
        layout = torch.rand(n, n, generator=GENERATOR) < 0.1
        layout[:, 0] = True
        layout = layout.to(DEVICE)
        calls = {
            "sdpa (dense)": (F.scaled_dot_product_attention, q, k, v),
            "window flex": (lambda q, k, v: ea.sliding_window_attention(
                q, k, v, window=w), q, k, v),
            "window torch": (lambda q, k, v: ea.sliding_window_attention(
                q, k, v, window=w, backend="torch"), q, k, v),
            "layout 10% flex": (lambda q, k, v: ea.block_sparse_attention(
                q, k, v, layout=layout, block_size=block), q, k, v),
        }  # fmt: skip
        if L <= 16384:  # it stores nnz x 64 x 64 float32 scores
            calls["layout 10% torch"] = (
                lambda q, k, v: ea.block_sparse_attention(
                    q, k, v, layout=layout, block_size=block,
                    backend="torch"), q, k, v)  # fmt: skip
        pairs = {
            "sdpa (dense)": L * L,
            "window flex": L * (2 * w + 1),
            "window torch": L * (2 * w + 1),
            "layout 10% flex": int(layout.sum()) * block * block,
            "layout 10% torch": int(layout.sum()) * block * block,
        }
        flops = {name: 4 * heads * head_dim * pairs[name] for name in calls}
        with torch.inference_mode():
            for fn, *args in calls.values():
                fn(*args)  # compile before timing
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()
            records = benchmark.compare(
                calls, baseline="sdpa (dense)", flops=flops, rounds=5,
                min_run_time=0.05)  # fmt: skip
        print(f"L = {L}, bf16, {heads} heads of {head_dim}, window "
              f"({w}, {w}), blocks of {block}:")  # fmt: skip
        for r in records:
            limit = L * L / pairs[r["name"]]
            print(f"  {r['name']:<18} {r['median_s'] * 1e3:9.3f} ms  "
                  f"x{r['speedup']:7.2f} [{r['speedup_low']:.2f}, "
                  f"{r['speedup_high']:.2f}]  pair limit x{limit:6.1f}  "
                  f"{r['gflops'] / 1e3:7.1f} TFLOP/s")  # fmt: skip
            report["timings"].append({"L": L, **r, "pair_limit": limit})


if __name__ == "__main__":
    print(benchmark.hardware_summary(DEVICE))
    report["provenance"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "hardware": benchmark.describe_hardware(DEVICE),
        "torch": torch.__version__,
        "command": "python scripts/flex_gpu_check.py",
    }
    equality()
    speed()
    out = pathlib.Path(os.environ.get("OUT", "."))
    (out / "flex_gpu.json").write_text(json.dumps(report, indent=1))
