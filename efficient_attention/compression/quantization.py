"""Quantization from scratch, and int8 for a real model with PyTorch's tools.

Uniform affine quantization (Jacob et al. 2018, "Quantization and Training of
Neural Networks for Efficient Integer-Arithmetic-Only Inference",
arXiv:1712.05877): ``q = clamp(round(x / scale) + zero_point)``, per tensor or
per channel, symmetric or asymmetric; two non-uniform grids at the same bit
width, a k-means codebook (Han et al. 2016, "Deep Compression",
arXiv:1510.00149) and a logarithmic (power-of-two) grid; fake-quantized
weights for a whole model, and dynamic int8 quantization of its linear layers
(Zafrir et al. 2019, "Q8BERT", arXiv:1910.06188) with
``torch.ao.quantization``. Taught in the chapter "Quantization".
"""

from __future__ import annotations

import copy
import dataclasses
import numbers
import warnings

import torch
from torch import Tensor, nn

from .._validation import check_bool, check_non_negative_int, check_tensor
from ..attention import analysis
from ..nlp.training import serialized_megabytes
from .pruning import prunable_linears

GRIDS = ("uniform", "kmeans", "log")
"""The grids ``quantize_weights`` and the chapter compare."""


def check_bits(bits: object, *, low: int = 2, high: int = 16) -> int:
    """A bit width must be an int in [low, high] (any integral type:
    ``8``, ``np.int64(8)``); returned as a Python int."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise ValueError(f"bits must be an int; got {bits!r}.")
    if not low <= bits <= high:
        raise ValueError(
            f"bits must be in [{low}, {high}]; got {bits}. 8 is int8, 4 is "
            "a nibble."
        )
    return int(bits)


def _check_values(x: object) -> Tensor:
    """``x`` must be a non-empty floating-point tensor of finite values:
    NaN or inf has no place on a grid (they made the scale NaN)."""
    check_tensor("x", x)
    if not torch.is_floating_point(x):
        raise ValueError(f"x must be a float tensor; got dtype {x.dtype}.")
    if x.numel() == 0:
        raise ValueError("x is empty; there is nothing to fit a grid to.")
    if not bool(x.detach().isfinite().all()):
        raise ValueError(
            "x holds NaN or inf; quantize finite values only (find them "
            "with x.isfinite().logical_not().nonzero())."
        )
    return x


@dataclasses.dataclass(frozen=True)
class Quantized:
    """Integer codes and the affine map back: ``x ~ scale * (q - zero_point)``.

    ``scale`` and ``zero_point`` broadcast against ``q`` (one value, or one
    per channel along ``axis``).
    """

    q: Tensor
    scale: Tensor
    zero_point: Tensor
    bits: int
    axis: int | None

    def dequantize(self) -> Tensor:
        return self.scale * (self.q - self.zero_point)


def integer_range(bits: int, *, symmetric: bool) -> tuple[int, int]:
    """Codes a ``bits``-wide integer takes: signed and symmetric around 0
    (``[-(2^(b-1) - 1), 2^(b-1) - 1]``), or unsigned (``[0, 2^b - 1]``)."""
    bits = check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def quantize_uniform(
    x: Tensor, bits: int, *, symmetric: bool = True, axis: int | None = None
) -> Quantized:
    """Uniform affine quantization of ``x`` with ``bits`` bits.

    Args:
        x: a float tensor.
        symmetric: zero point 0 and a range ``[-max|x|, max|x|]``; else the
            range ``[min x, max x]`` (with 0 inside it) maps onto the codes.
        axis: one scale per slice along this axis (per channel: ``axis=0``
            for a weight's output rows), or one for the whole tensor.

    Returns:
        ``Quantized`` with int64 codes shaped like ``x``; its scale and
        zero point are float32 for half-precision ``x`` (float16's
        smallest normal number, 6e-5, is too coarse a scale floor).

    Raises:
        ValueError: ``x`` not a non-empty float tensor of finite values, a
            bad bit width, ``axis`` not an int naming a dimension of ``x``,
            or ``symmetric`` not a bool.

    Complexity:
        O(numel) time and memory.

    Equivalent to:
        ``torch.fake_quantize_per_tensor_affine`` (per channel:
        ``torch.fake_quantize_per_channel_affine``) after ``dequantize()``.
    """
    _check_values(x)
    check_bool("symmetric", symmetric)
    if axis is not None:
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise ValueError(
                f"axis must be an int naming a dimension of x (shape "
                f"{tuple(x.shape)}) or None; got {axis!r}."
            )
        if not -x.dim() <= axis < x.dim():
            raise ValueError(
                f"axis must name a dimension of x (shape {tuple(x.shape)}); "
                f"got {axis}."
            )
        axis = int(axis)
    qmin, qmax = integer_range(bits, symmetric=symmetric)
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # the scale floor below underflows in half precision
    reduce = (
        tuple(range(x.dim()))
        if axis is None
        else tuple(d for d in range(x.dim()) if d != axis % x.dim())
    )
    low = x.detach().amin(dim=reduce, keepdim=True).clamp(max=0)
    high = x.detach().amax(dim=reduce, keepdim=True).clamp(min=0)
    tiny = torch.finfo(torch.float32).tiny
    if symmetric:
        scale = (torch.maximum(-low, high) / qmax).clamp_min(tiny)
        zero_point = torch.zeros_like(scale)
    else:
        scale = ((high - low) / (qmax - qmin)).clamp_min(tiny)
        zero_point = (qmin - torch.round(low / scale)).clamp(qmin, qmax)
    q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
    return Quantized(q.long(), scale, zero_point, bits, axis)


def fake_quantize(
    x: Tensor, bits: int, *, symmetric: bool = True, axis: int | None = None
) -> Tensor:
    """``quantize_uniform(x, ...).dequantize()``: ``x`` on its grid, in
    ``x``'s dtype (half precision is computed in float32)."""
    quantized = quantize_uniform(x, bits, symmetric=symmetric, axis=axis)
    return quantized.dequantize().to(x.dtype)


def kmeans_codebook(
    x: Tensor, bits: int, *, iterations: int = 25
) -> tuple[Tensor, Tensor]:
    """A non-uniform grid: ``2**bits`` levels fitted to ``x`` by k-means.

    Lloyd's algorithm in one dimension, started from evenly spaced quantiles
    (deterministic), each value assigned to its nearest level.

    Returns:
        ``(codebook (2**bits,), codes)``: ``codebook[codes]`` approximates
        ``x``; codes are int64 shaped like ``x``.

    Raises:
        ValueError: ``x`` not a non-empty float tensor of finite values, a
            bad bit width, or ``iterations`` not an int >= 0.
    """
    _check_values(x)
    bits = check_bits(bits, high=12)
    iterations = check_non_negative_int("iterations", iterations)
    # float64 sums: the mean of equal float32 values is then exact
    values = x.detach().flatten().double()
    levels = 2**bits
    quantiles = (torch.arange(levels, dtype=torch.float64) + 0.5) / levels
    step = values.numel() // 2**24 + 1  # torch.quantile takes <= 2**24 values
    codebook = torch.quantile(values[::step], quantiles).float().double()
    for _ in range(iterations):
        codes = _nearest(values, codebook)
        sums = values.new_zeros(levels).index_add_(0, codes, values)
        counts = torch.bincount(codes, minlength=levels).double()
        codebook = torch.where(
            counts > 0, sums / counts.clamp_min(1), codebook
        )
        codebook = codebook.float().sort().values.double()  # float32 levels
    codebook = codebook.float()
    return codebook, _nearest(values, codebook).view(x.shape)


def _nearest(values: Tensor, sorted_levels: Tensor) -> Tensor:
    """Index of the nearest of ``sorted_levels`` for each value.

    Compared in float64, where the midpoint of two float32 levels is
    exact: in float32 it can round onto a level, and a value equal to that
    level then went to its neighbour.
    """
    levels = sorted_levels.double()
    midpoints = (levels[1:] + levels[:-1]) / 2
    return torch.bucketize(values.double(), midpoints)


def log_grid(x: Tensor, bits: int) -> Tensor:
    """A logarithmic grid: 0 and ``±max|x| * 2^-k`` for ``k = 0, 1, ...``.

    One bit holds the sign; the other ``bits - 1`` bits code 0 or one of
    ``2^(bits-1) - 1`` powers of two below the largest magnitude, so small
    weights get fine steps and large ones coarse steps.

    Returns:
        The sorted levels, ``(2^bits - 1,)``.

    Raises:
        ValueError: ``x`` not a non-empty float tensor of finite values, or
            a bad bit width.
    """
    _check_values(x)
    bits = check_bits(bits, high=12)
    top = (
        x.detach()
        .abs()
        .max()
        .float()
        .clamp_min(torch.finfo(torch.float32).tiny)
    )
    powers = top * 2.0 ** -torch.arange(
        2 ** (bits - 1) - 1, dtype=torch.float32
    )
    return torch.cat([-powers, torch.zeros(1), powers.flip(0)])


def quantize_to_grid(x: Tensor, levels: Tensor) -> Tensor:
    """Round every value of ``x`` to its nearest level.

    Args:
        x: a float tensor of finite values.
        levels: a non-empty 1-D float tensor of finite values, in any
            order (sorted here).

    Returns:
        ``x``'s shape and dtype, every value one of ``levels``.

    Raises:
        ValueError: ``x`` or ``levels`` not as above.
    """
    _check_values(x)
    check_tensor("levels", levels)
    if (
        levels.dim() != 1
        or levels.numel() == 0
        or not levels.is_floating_point()
        or not bool(levels.isfinite().all())
    ):
        raise ValueError(
            f"levels must be a non-empty 1-D float tensor of finite values; "
            f"got {levels.dtype} of shape {tuple(levels.shape)}."
        )
    ordered = levels.detach().float().sort().values
    return ordered[_nearest(x.detach().float(), ordered)].to(x.dtype)


def quantize_values(x: Tensor, bits: int, *, grid: str = "uniform") -> Tensor:
    """``x`` rounded onto a ``bits``-bit grid: ``"uniform"`` (symmetric, per
    tensor), ``"kmeans"`` or ``"log"``; returns floats shaped like ``x``."""
    if grid == "uniform":
        return fake_quantize(x, bits)
    if grid == "kmeans":
        codebook, codes = kmeans_codebook(x, bits)
        return codebook[codes].to(x.dtype)
    if grid == "log":
        return quantize_to_grid(x, log_grid(x, bits))
    raise ValueError(f"grid must be one of {GRIDS}; got {grid!r}.")


def relative_error(x: Tensor, approx: Tensor) -> float:
    """``||x - approx|| / ||x||`` (Frobenius): how far the rounded ``approx``
    lies from the weights ``x`` (``ea.relative_error(approx, x)``)."""
    return analysis.relative_error(approx, x)


@torch.no_grad()
def quantize_weights(
    model: nn.Module,
    bits: int | dict[str, int],
    *,
    per_channel: bool = True,
    grid: str = "uniform",
) -> int:
    """Round the encoder's weight matrices onto a grid, in place (fake quant).

    The model still computes in float32; only the weights' values change, so
    the accuracy cost of a bit width shows without integer kernels.

    Args:
        bits: one width for every matrix, or ``{name: bits}`` over the names
            of ``prunable_linears`` (mixed precision; others stay float).
        per_channel: one scale per output row (uniform grid only).
        grid: ``"uniform"``, ``"kmeans"`` or ``"log"``.

    Returns:
        The number of matrices rounded.

    Raises:
        ValueError: a name that is not a matrix of ``prunable_linears``, a
            bad bit width (the message names the matrix), grid or
            ``per_channel``; the model is then left unchanged.
    """
    linears = prunable_linears(model)
    widths = bits if isinstance(bits, dict) else dict.fromkeys(linears, bits)
    unknown = set(widths) - set(linears)
    if unknown:
        raise ValueError(
            f"bits names matrices the model does not have: "
            f"{sorted(map(str, unknown))}; use names from "
            f"prunable_linears(model)."
        )
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}; got {grid!r}.")
    check_bool("per_channel", per_channel)
    # every matrix rounded first, then all copied: a bad width or weight
    # leaves the model as it was
    rounded = {}
    for name, width in widths.items():
        weight = linears[name].weight
        try:
            if grid == "uniform" and per_channel:
                rounded[name] = fake_quantize(weight, width, axis=0)
            else:
                rounded[name] = quantize_values(weight, width, grid=grid)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
    for name, weight in rounded.items():
        linears[name].weight.copy_(weight)
    return len(widths)


def quantize_dynamic_int8(model: nn.Module) -> tuple[nn.Module, str]:
    """Dynamic int8 quantization of every ``nn.Linear`` (a new model).

    Weights are stored as int8 with one scale per output channel; each call
    quantizes the activations with a scale measured on the fly (no
    calibration set needed) and runs an int8 matrix product. Attention's own
    products, softmax, GELU and LayerNorm stay in float32.

    Returns:
        ``(quantized copy, description)``: the description names the tool,
        the quantized engine and the CPU capability that ran.
    """
    engine = torch.backends.quantized.engine
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; its CPU
        # kernels (fbgemm / oneDNN) are the ones that run without compiling.
        warnings.simplefilter("ignore")
        per_channel = torch.ao.quantization.per_channel_dynamic_qconfig
        quantized = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {nn.Linear: per_channel}, dtype=torch.qint8
        )
    description = (
        f"torch.ao.quantization.quantize_dynamic (qint8 weights, one scale "
        f"per output channel; per-call activation scales), engine "
        f"{engine!r}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}"
    )
    return quantized, description


def non_embedding_megabytes(model: nn.Module) -> float:
    """``serialized_megabytes`` of the encoder layers, pooler and classifier
    (the embedding tables, which quantization here leaves alone, excluded)."""
    base = getattr(model, "base_model", model)
    total = serialized_megabytes(base.encoder)
    for name in ("pooler", "classifier"):
        for owner in (base, model):
            part = getattr(owner, name, None)
            if isinstance(part, nn.Module):
                total += serialized_megabytes(part)
                break
    return total
