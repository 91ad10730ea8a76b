"""Lines the native runtimes (LiteRT, TensorFlow) write straight to file descriptor 2, kept out of a quiet run."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading

# Set (to anything) by `sentiment-score -v`: every native line is shown again. Worker processes inherit it.
VERBOSE_ENV = "SENTIMENT_SCORE_VERBOSE"

# What the C++ runtimes print on every clean run; anything else they print is passed through.
NATIVE_NOISE = (
    re.compile(r"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."),
    re.compile(r"oneDNN custom operations are on\."),
    re.compile(r"NodeDef mentions attribute \w+ which is not in the op definition"),
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
)

_lock = threading.Lock()
_depth = 0


def is_noise(line: str) -> bool:
    return any(pattern.search(line) for pattern in NATIVE_NOISE)


@contextlib.contextmanager
def quiet_native_stderr():
    """Captures fd 2 while the block runs, then writes back every line that is not known noise.

    C++ code writes to the file descriptor, past Python's sys.stderr and logging, so the descriptor itself is
    redirected. It is process-wide: another thread's output in the window is held back and written after, not lost.
    Nested or concurrent uses capture once. With VERBOSE_ENV set nothing is captured.
    """
    global _depth
    if os.environ.get(VERBOSE_ENV):
        yield
        return
    with _lock:
        _depth += 1
        first = _depth == 1
        if first:
            sys.stderr.flush()
            saved = os.dup(2)
            held = tempfile.TemporaryFile()  # noqa: SIM115 (closed when the block ends, below)
            os.dup2(held.fileno(), 2)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if first:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                held.seek(0)
                lines = held.read().splitlines(keepends=True)
                kept = [line for line in lines if not is_noise(line.decode(errors="replace"))]
                held.close()
                if kept:
                    os.write(2, b"".join(kept))
