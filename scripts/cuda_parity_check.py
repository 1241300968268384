"""On a CUDA GPU: does every attention variant compute on the GPU what it
computes on the CPU, forward and backward, and how fast is it there?

For each variant the same float32 inputs run on the CPU and on CUDA
(``backend="auto"`` where there is one); the script prints the largest
difference of the outputs and of the gradients, then times every variant in
bf16 against SDPA with ``benchmark.compare`` (interleaved rounds).

    python scripts/cuda_parity_check.py          # prints; JSON to $OUT or .

``efficient_attention/book_data/cuda-parity-h200.json`` is one such run (an
H200, 2026-12-04).
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import pathlib
import sys
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import efficient_attention as ea  # noqa: E402
from efficient_attention import attention, benchmark, masks  # noqa: E402

DEVICE = torch.device(os.environ.get("PARITY_DEVICE", "cuda"))
L_CHECK, L_TIME = 512, int(os.environ.get("PARITY_TIME_LENGTH", "16384"))
HEADS, HEAD_DIM = 4, 64


def variants(
    L: int, heads: int, device: torch.device, dtype=torch.float32
) -> dict[str, object]:
    """name -> fn(q, k, v), each built for ``L`` tokens and ``heads``
    heads on ``device``."""
    g = torch.Generator().manual_seed(0)
    n = masks.n_blocks(L, 64)
    layout = torch.rand(n, n, generator=g) < 0.1
    layout[:, 0] = True
    layout = layout.to(device)
    proj = attention.make_linformer_projections(
        L, 64, generator=g, device=device, dtype=dtype
    )
    features = attention.make_performer_features(
        64, HEAD_DIM, generator=g, device=device, dtype=dtype
    )
    windows = [(8, 8), (16, 0), (4, 4), (32, 32)] * (heads // 4)
    dilations = [1, 2, 3, 1] * (heads // 4)
    window_mask = masks.create_mask(
        masks.sliding_window(32), L, L, device=device
    )
    return {
        "sdpa": F.scaled_dot_product_attention,
        "dense": ea.dense_attention,
        "window (32, 32)": functools.partial(
            ea.sliding_window_attention, window=32),
        "window per head, dilated": functools.partial(
            ea.sliding_window_attention,
            window=windows, dilation=dilations),
        "block-sparse 10%": functools.partial(
            ea.block_sparse_attention, layout=layout, block_size=64),
        "sparse (BigBird-like mask)": functools.partial(
            ea.sparse_attention, pattern=masks.or_masks(
                masks.sliding_window(32), masks.global_tokens(2))),
        "routing (8 clusters)": functools.partial(
            ea.routing_attention, clusters=8,
            generator=torch.Generator().manual_seed(1)),
        "top-k 32": functools.partial(attention.top_k_attention, top_k=32),
        "csr (window mask)": functools.partial(
            attention.csr_attention, attn_mask=window_mask),
        "pyramid": functools.partial(attention.pyramid_attention,
                                     block_size=64),
        "recursive": functools.partial(attention.recursive_attention,
                                       block_size=64),
        "coarse-to-fine": functools.partial(
            attention.coarse_to_fine_attention, block_size=64, top_k=2),
        "linformer 64": functools.partial(
            attention.linformer_attention, proj_k=proj),
        "nystrom 64": functools.partial(
            attention.nystrom_attention, num_landmarks=64),
        "performer 64": functools.partial(
            attention.performer_attention, features=features),
    }  # fmt: skip


def parity(report: dict) -> None:
    g = torch.Generator().manual_seed(2)
    inputs = [torch.randn(1, HEADS, L_CHECK, HEAD_DIM, generator=g)
              for _ in "qkv"]  # fmt: skip
    weights = torch.randn(1, HEADS, L_CHECK, HEAD_DIM, generator=g)
    on_cpu = variants(L_CHECK, HEADS, torch.device("cpu"))
    on_gpu = variants(L_CHECK, HEADS, DEVICE)
    for name in on_cpu:
        results = []
        for fns, device in ((on_cpu, "cpu"), (on_gpu, DEVICE)):
            q, k, v = (
                t.detach().clone().to(device).requires_grad_() for t in inputs
            )
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    out = fns[name](q, k, v)
                    (out * weights.to(device)).sum().backward()
                grads = torch.cat([t.grad.flatten() for t in (q, k, v)])
                said = sorted({str(w.message)[:160] for w in caught})
                results.append((out.detach().cpu(), grads.cpu(), said))
            except Exception as error:  # report and go on
                results.append(f"{type(error).__name__}: {error}"[:300])
        if any(isinstance(r, str) for r in results):
            print(f"ERR {name}: {results}")
            report["parity"][name] = {"error": [str(r)[:300]
                                                for r in results]}
            continue
        (out_c, grad_c, _), (out_g, grad_g, said) = results
        forward = (out_c - out_g).abs().max().item()
        backward = (grad_c - grad_g).abs().max().item()
        ok = forward < 1e-3 and backward < 1e-3
        print(f"{'ok ' if ok else 'BAD'} {name}: forward {forward:.1e}, "
              f"backward {backward:.1e}"
              + (f"; warned: {said}" if said else ""))  # fmt: skip
        report["parity"][name] = {
            "forward": forward, "backward": backward, "warned": said
        }


def speed(report: dict) -> None:
    L = L_TIME
    q, k, v = benchmark.attention_inputs(
        L, heads=12, dtype=torch.bfloat16, device=DEVICE
    )
    fns = variants(L, 12, DEVICE, torch.bfloat16)
    calls = {}
    with torch.inference_mode():
        for name, fn in fns.items():
            if name in ("dense", "csr (window mask)"):
                continue  # the whole L x L matrix, by design
            try:
                fn(q, k, v)  # compile, build, warm up
                calls[name] = (fn, q, k, v)
            except Exception as error:
                print(f"ERR timing {name}: {type(error).__name__}: "
                      f"{str(error)[:200]}")  # fmt: skip
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        records = benchmark.compare(
            calls, baseline="sdpa", rounds=5, min_run_time=0.05
        )
    print(f"L = {L}, bf16, 12 heads of 64, x SDPA (median [range]):")
    for r in records:
        print(f"  {r['name']:<28} {r['median_s'] * 1e3:9.3f} ms  "
              f"x{r['speedup']:7.2f} [{r['speedup_low']:.2f}, "
              f"{r['speedup_high']:.2f}]")  # fmt: skip
    report["timings"] = [{"L": L, **r} for r in records]


if __name__ == "__main__":
    print(benchmark.hardware_summary(DEVICE))
    report = {
        "provenance": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "hardware": benchmark.describe_hardware(DEVICE),
            "torch": torch.__version__,
            "command": "python scripts/cuda_parity_check.py",
        },
        "parity": {},
    }
    parity(report)
    speed(report)
    out = pathlib.Path(os.environ.get("OUT", "."))
    (out / "cuda_parity.json").write_text(json.dumps(report, indent=1))
