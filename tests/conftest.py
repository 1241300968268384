"""pytest configuration of the unit tests: hypothesis profiles, a hang guard.

Two hypothesis profiles for the property suite (tests/properties/):

- ``ci``, the default: few examples per property, so ``make test`` runs the
  whole unit suite in well under a minute on a 2-core machine; derandomized,
  so every run draws the same examples and a clean clone's CI is
  reproducible (a new counterexample never turns a green commit red);
- ``explore``: the ``ci`` budget with fresh random examples on every run,
  for the hunt that finds new counterexamples (``make fuzz``);
- ``thorough``: many more random examples, for a longer hunt, chosen with
  ``pytest tests --hypothesis-profile thorough``.

Both give every example a deadline (a time limit per example). A deadline
only fails an example once it has finished, so a test that hangs is ended by
an alarm instead (on systems with SIGALRM), after ``hang_limit_s()`` seconds.
"""

from __future__ import annotations

import os
import pathlib
import signal
import threading
from datetime import timedelta

import pytest
from hypothesis import settings

# No test reaches a model or dataset hub (without these a failed look-up
# stalls); set before any test module imports transformers or datasets.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# The Triton kernel's tests run it in Triton's interpreter (numpy, on the
# CPU), which Triton picks when it is first imported; on a machine with a
# GPU, TRITON_INTERPRET=0 runs them compiled instead.
os.environ.setdefault("TRITON_INTERPRET", "1")

settings.register_profile(
    "ci",
    max_examples=20,
    deadline=timedelta(seconds=5),
    derandomize=True,
    print_blob=True,
)
settings.register_profile(
    "explore",
    max_examples=20,
    deadline=timedelta(seconds=5),
    print_blob=True,
)
settings.register_profile(
    "thorough",
    max_examples=1000,
    deadline=timedelta(seconds=5),
    print_blob=True,
)
settings.load_profile("ci")  # --hypothesis-profile overrides this


def hang_limit_s() -> int:
    """Seconds no test takes unless it hangs, for the profile in use.

    60 s plus half a second an example: 70 s with ``ci``, whose slowest
    test takes about 2 s on 2 cores; 560 s with ``thorough``, whose slowest
    takes about 100 s.
    """
    return 60 + settings().max_examples // 2


class Hang(BaseException):
    """A test ran past ``hang_limit_s()``.

    A BaseException, so that hypothesis does not take it for a failing
    example and retry (and hang) while shrinking.
    """


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    if (
        not hasattr(signal, "SIGALRM")
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return

    limit = hang_limit_s()

    def hang(signum: int, frame: object) -> None:
        raise Hang(f"{item.nodeid} ran for over {limit} s: a hang?")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(limit)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


BROWSER_SUITE = pathlib.Path(__file__).parent / "browser"


def pytest_ignore_collect(
    collection_path: pathlib.Path, config: pytest.Config
) -> bool | None:
    """``pytest tests`` runs the unit tests; the browser suite (it needs the
    built site and Chromium) runs when named: ``pytest tests/browser``, as
    ``make browser-test`` does."""
    if collection_path != BROWSER_SUITE:
        return None
    named = [pathlib.Path(a.split("::")[0]).resolve() for a in config.args]
    return not any(
        p == BROWSER_SUITE or BROWSER_SUITE in p.parents for p in named
    )
