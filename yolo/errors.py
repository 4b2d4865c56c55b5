"""Turning expected failures into one clear line for command-line users."""

from __future__ import annotations

import sys
from typing import Any, Callable

# Bad input raises a ValueError subclass (DataError, CheckpointError, ModelConfigError, ...) or an OSError
# naming the file; both reach the user as one line. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def run_cli(func: Callable[[Any], Any], args: Any, debug: bool = False) -> int:
    """Run a command; expected errors print `error: ...` on one line and exit 2 (set YOLO_SLIM_DEBUG=1 to trace)."""
    try:
        func(args)
    except USER_ERRORS as e:
        if debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
