"""Progress reporting shared by the Slicer panels, the `vsp` command and batch runs.

A long step takes ``progress: ProgressCallback | None`` and calls it with a fraction in [0, 1]
and a short message. ``None`` means nobody listens.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[float, str], None]


def report(progress: ProgressCallback | None, fraction: float, message: str) -> None:
    if progress is not None:
        progress(min(max(float(fraction), 0.0), 1.0), message)


def scaled(progress: ProgressCallback | None, start: float, stop: float) -> ProgressCallback | None:
    """A callback that maps a sub-step's [0, 1] onto [start, stop] of the caller's progress."""
    if progress is None:
        return None

    def _sub(fraction: float, message: str) -> None:
        progress(start + (stop - start) * min(max(fraction, 0.0), 1.0), message)

    return _sub
