"""Turning expected failures into one clear line for command-line users."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any, Callable

# Bad input raises a ValueError subclass (DataError, CheckpointError, ModelConfigError, ...) or an OSError
# naming the file; both reach the user as one line. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's stop, `timeout`, `kill`), raised like Ctrl-C so the same clean-up runs."""


def interrupt_exit_code(e: BaseException) -> int:
    """The shell's code for a run stopped by a signal: 128 + the signal's number."""
    return 128 + (signal.SIGTERM if isinstance(e, Terminated) or getattr(e, "terminated", False) else signal.SIGINT)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises `Terminated` instead of killing the process outright: SLURM, Kubernetes and
    `timeout` stop a job with SIGTERM, and a training run should then save its position as on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        _terminated.set()
        raise Terminated("terminated (SIGTERM)")

    _terminated.clear()
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _terminated.clear()


_terminated = threading.Event()


def raise_if_terminated() -> None:
    """Raise `Terminated` if a SIGTERM came in under `sigterm_as_interrupt`. The handler raises at once, but when
    the signal lands while Python runs a __del__ or a weakref callback (garbage collection), that exception is only
    printed ("Exception ignored in ...") and the run went on; loops call this to stop at their next step anyway."""
    if _terminated.is_set():
        raise Terminated("terminated (SIGTERM)")


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them to the handlers that were in place: for
    bookkeeping that must not stop half-way (an epoch's results row, last.pt and best.pt written together)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    signums = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        for s in dict.fromkeys(caught):
            signal.raise_signal(s)


@contextlib.contextmanager
def one_line_warnings(debug: bool = False):
    """Warnings as `warning: <message>` on one line while a command runs, instead of Python's default of the file,
    line and source line of the code that warned, which tells a user nothing (kept under YOLO_SLIM_DEBUG)."""
    if debug:
        yield
        return
    previous = warnings.formatwarning
    warnings.formatwarning = lambda message, *_a, **_k: f"warning: {' '.join(str(message).split())}\n"
    try:
        yield
    finally:
        warnings.formatwarning = previous


def classes_text(n: int) -> str:
    """'1 class', '2 classes': class counts in messages."""
    return f"{n} class" if n == 1 else f"{n} classes"


def run_cli(func: Callable[[Any], Any], args: Any, debug: bool = False) -> int:
    """Run a command; expected errors print `error: ...` on one line and exit 2 (set YOLO_SLIM_DEBUG=1 to trace).
    Ctrl-C and SIGTERM both stop it as an interruption (exit 130 / 143)."""
    try:
        with sigterm_as_interrupt(), one_line_warnings(debug):
            func(args)
    except USER_ERRORS as e:
        if debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        code = interrupt_exit_code(e)
        print("terminated" if code == 128 + signal.SIGTERM else "interrupted", file=sys.stderr)
        return code
    return 0
