"""Small C++ kernels, compiled on first use for the reader's own CPU.

Some patterns cannot get near the FLOP limit in pure PyTorch on a CPU (a
sliding window is a band of tiny matrix products, and every PyTorch call
costs microseconds). For those, the package ships a short C++ file in
``efficient_attention/csrc``; ``load`` compiles it once with the machine's
C++ compiler (``-O3 -march=native``, OpenMP when the compiler has it),
caches the library, and opens it with ``ctypes``. Nothing is downloaded.
``$EFFICIENT_ATTENTION_KERNEL_FLAGS`` replaces ``-march=native`` with flags
of your choice, e.g. ``-march=x86-64`` for code any x86-64 CPU runs (the
portability tests build the kernels that way too).
Where there is no compiler (or the build fails), ``status`` says why, and
the attention functions run their PyTorch version instead; ``use_kernel``
is their one rule for when a kernel runs. Both kernels have a backward
pass as well (``sliding_window_backward``, ``block_sparse_backward``), so
training takes them too. The chapter "Local attention" explains the
sliding-window kernel.

The cache folder is ``$EFFICIENT_ATTENTION_CACHE/kernels`` when that
variable is set, else ``~/.cache/efficient_attention/kernels``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings

SOURCE_DIR = pathlib.Path(__file__).resolve().parent / "csrc"
BASE_FLAGS = ("-O3", "-std=gnu++17", "-shared", "-fPIC")

_POINTER, _SIZE = ctypes.c_void_p, ctypes.c_int64
SIGNATURES: dict[str, dict[str, tuple[list, type]]] = {
    "sliding_window": {
        # q, k, v, out; BH, L, S, E, Ev; left, right, dilation (BH,);
        # shift, scale, block, threads -> rows whose scores overflowed
        "sliding_window_forward": (
            [_POINTER] * 4
            + [_SIZE] * 5
            + [_POINTER] * 3
            + [ctypes.c_int, ctypes.c_float, _SIZE, ctypes.c_int],
            _SIZE,
        ),
        # q, k, v, dout, dq, dk, dv; BH, L, S, E, Ev; left, right,
        # dilation (BH,); shift, scale, threads -> rows that overflowed
        "sliding_window_backward": (
            [_POINTER] * 7
            + [_SIZE] * 5
            + [_POINTER] * 3
            + [ctypes.c_int, ctypes.c_float, ctypes.c_int],
            _SIZE,
        ),
    },
    "block_sparse": {
        # q, k, v, out, lse; BH, L, S, E, Ev, block, heads; row_ptr, cols,
        # mask_index, element masks; scale, threads -> rows that overflowed
        "block_sparse_forward_lse": (
            [_POINTER] * 5
            + [_SIZE] * 7
            + [_POINTER] * 4
            + [ctypes.c_float, ctypes.c_int],
            _SIZE,
        ),
        # q, k, v, dout, lse, delta, dq, dk, dv; BH, L, S, E, Ev, block,
        # heads; row_ptr, cols, mask_index, element masks; scale, threads
        "block_sparse_backward": (
            [_POINTER] * 9
            + [_SIZE] * 7
            + [_POINTER] * 4
            + [ctypes.c_float, ctypes.c_int],
            None,
        ),
    },
}
"""Every kernel's C functions and their ctypes signatures (argument types,
return type), set when ``load`` opens the library; the order of the
arguments is the one the C++ source documents."""


class KernelUnavailable(RuntimeError):
    """A kernel could not be built or loaded here; the message says why."""


def cache_dir() -> pathlib.Path:
    """Where compiled kernels are kept (see the module docstring)."""
    root = os.environ.get("EFFICIENT_ATTENTION_CACHE")
    if root:
        return pathlib.Path(root).expanduser() / "kernels"
    return pathlib.Path.home() / ".cache" / "efficient_attention" / "kernels"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++"))


def _cpu_flags() -> str:
    """The CPU's feature flags: a library built with -march=native for one
    CPU must not be reused on another."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def target_flags() -> tuple[str, ...]:
    """The flags that choose the instruction set: ``-march=native`` (on arm64
    ``-mcpu=native``), or ``$EFFICIENT_ATTENTION_KERNEL_FLAGS`` split on
    spaces when that variable is set."""
    chosen = os.environ.get("EFFICIENT_ATTENTION_KERNEL_FLAGS", "").split()
    if chosen:
        return tuple(chosen)
    if platform.machine() == "arm64":
        return ("-mcpu=native",)
    return ("-march=native",)


def _flag_sets() -> list[tuple[str, ...]]:
    """Flags to try in order: with OpenMP, then without."""
    return [
        (*BASE_FLAGS, *target_flags(), "-fopenmp"),
        (*BASE_FLAGS, *target_flags()),
    ]


def load(name: str) -> ctypes.CDLL:
    """Compile (once) and open the kernel ``csrc/<name>.cpp``.

    Returns:
        the loaded library; its functions are described in the source.

    Raises:
        ValueError: no kernel of that name.
        KernelUnavailable: no C++ compiler, or every build failed (the
            message holds the compiler's last error lines). The outcome is
            remembered: a failed build is not retried in this process.
    """
    if name in _LOADED:
        return _LOADED[name]
    source = SOURCE_DIR / f"{name}.cpp"
    if not source.is_file():
        known = sorted(p.stem for p in SOURCE_DIR.glob("*.cpp"))
        raise ValueError(f"no kernel named {name!r}; known: {known}.")
    library, error = _load_once(source)
    if library is None:
        raise KernelUnavailable(error)
    for symbol, (arguments, result) in SIGNATURES.get(name, {}).items():
        function = getattr(library, symbol)
        function.argtypes, function.restype = arguments, result
    _LOADED[name] = library
    return library


_LOADED: dict[str, ctypes.CDLL] = {}


@functools.lru_cache(maxsize=None)
def _load_once(source: pathlib.Path) -> tuple[ctypes.CDLL | None, str]:
    """The library and a note on how it was built, or None and the error."""
    compiler = _compiler()
    if compiler is None:
        return None, "no C++ compiler found (set CXX, or install g++)."
    errors: list[str] = []
    for flags in _flag_sets():
        library = _build(compiler, source, flags, errors)
        if library is not None:
            note = (
                ""
                if "-fopenmp" in flags
                else (
                    "built without OpenMP (the compiler has none), so it runs "
                    "on one thread"
                )
            )
            return ctypes.CDLL(str(library)), note
    return None, f"building {source.name} failed:\n{errors[-1]}"


def _build(
    compiler: str,
    source: pathlib.Path,
    flags: tuple[str, ...],
    errors: list[str],
) -> pathlib.Path | None:
    """The path of the compiled library (built if not cached), or None."""
    headers = [h.read_text() for h in sorted(source.parent.glob("*.h"))]
    key = hashlib.sha256(
        "\0".join(
            (
                source.read_text(),
                *headers,
                compiler,
                *flags,
                _cpu_flags(),
                sys.platform,
            )
        ).encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"{source.stem}-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = pathlib.Path(scratch) / target.name
        result = subprocess.run(
            [compiler, *flags, str(source), "-o", str(built)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            errors.append(result.stderr.strip()[-2000:])
            return None
        os.replace(built, target)  # atomic: concurrent builds are safe
    return target


def batch_heads_float32(BH: int, *tensors):
    """Each ``(..., N, F)`` tensor as the kernels read it: contiguous
    float32 of shape ``(BH, N, F)``, its ``BH`` leading entries flattened."""
    import torch

    return tuple(
        t.reshape(BH, t.shape[-2], t.shape[-1]).to(torch.float32).contiguous()
        for t in tensors
    )


PARALLEL_MIN_FLOPS = 2**21
"""Below about this many FLOPs a kernel call runs on one thread: waking a
second thread costs more than it saves (tens of microseconds), and on a
busy machine the call would wait for a free core at the end."""


def threads_for(flops: float) -> int:
    """Threads for a kernel call of about ``flops`` FLOPs: all of
    PyTorch's (``torch.get_num_threads()``), or 1 for a small call."""
    import torch

    if flops < PARALLEL_MIN_FLOPS:
        return 1
    return torch.get_num_threads()


def status(name: str) -> str:
    """``"ready"`` when kernel ``name`` loads here (with a note if it could
    only be built for one thread, and the target flags when they are not
    the default), else the reason it does not (the attention functions
    then run their PyTorch version)."""
    try:
        load(name)
    except KernelUnavailable as error:
        return f"unavailable: {error}"
    _, note = _load_once(SOURCE_DIR / f"{name}.cpp")
    notes = [note] if note else []
    if os.environ.get("EFFICIENT_ATTENTION_KERNEL_FLAGS", "").split():
        notes.append(f"built with {' '.join(target_flags())}")
    return "ready, but " + "; ".join(notes) if notes else "ready"


def use_kernel(
    name: str,
    backend: str,
    query,
    key,
    value,
    *,
    elsewhere: str = "",
    backward: bool = False,
) -> bool:
    """Whether an attention call with ``backend`` runs kernel ``name``.

    ``"torch"`` and ``"flex"`` never do. ``"kernel"`` must: it raises
    ``NotImplementedError`` for a call the kernels cannot run (a gradient,
    unless the kernel has a ``backward`` pass, a tensor off the CPU,
    float64) and ``KernelUnavailable`` when the
    kernel cannot be built. ``"auto"`` runs it when it can, says once why
    not when the kernel cannot be built, and, given ``elsewhere`` (what the
    caller does off the CPU), says once that a tensor on another device
    takes the PyTorch version.
    """
    import torch

    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (query, key, value)
    )
    reason = None
    if needs_grad and not backward:
        reason = "it computes no gradients"
    elif query.device.type != "cpu":
        reason = f"it runs on the CPU, not {query.device.type}"
    elif query.dtype == torch.float64:
        reason = "it computes in float32, not float64"
    if backend in ("torch", "flex"):
        return False
    if backend == "kernel":
        if reason is not None:
            raise NotImplementedError(
                f"backend='kernel' cannot run this call: {reason}. Use "
                f"backend='torch' (or 'auto', which picks it)."
            )
        load(name)  # raises with the reason
        return True
    if reason is not None:
        if elsewhere and query.device.type not in ("cpu", "meta"):
            warn_fallback_once(name, f"{reason} ({elsewhere})")
        return False
    try:
        load(name)
    except KernelUnavailable as error:
        warn_fallback_once(name, str(error))
        return False
    return True


_WARNED: set[str] = set()


def warn_fallback_once(name: str, reason: str) -> None:
    """Say once per reason that kernel ``name`` did not run, and why."""
    if reason not in _WARNED:
        _WARNED.add(reason)
        warnings.warn(
            f"the {name.replace('_', '-')} C++ kernel is unavailable here, "
            f"so the PyTorch version runs instead: {reason}",
            RuntimeWarning,
            stacklevel=4,
        )
