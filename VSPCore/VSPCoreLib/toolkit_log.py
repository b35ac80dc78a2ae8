"""VTK's and ITK's own messages go to Python logging (logger `vsp.toolkit`), never to stdout.

VTK reports through its output window and its logger; SimpleITK through ITK's global output
window. `install()` turns their own printing off and forwards every message to the logger at
DEBUG level (`vsp --debug` shows them). Our errors say what went wrong in one message; what the
toolkit said is in the log. `native_stdout_to_stderr()` is a last guard for `--json` output:
anything native code writes to file descriptor 1 lands on stderr, while Python's `print` still
reaches the real stdout.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("vsp.toolkit")

_state: dict = {}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def install() -> None:
    """Route VTK and SimpleITK messages to the `vsp.toolkit` logger (idempotent)."""
    if _state.get("installed"):
        return
    import vtk

    window = vtk.vtkOutputWindow.GetInstance()
    window.SetDisplayModeToNever()  # no printing; the events below still fire
    if hasattr(vtk, "vtkLogger"):
        vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)

    levels = {
        vtk.vtkCommand.ErrorEvent: "VTK error",
        vtk.vtkCommand.WarningEvent: "VTK warning",
        vtk.vtkCommand.MessageEvent: "VTK",
        vtk.vtkCommand.TextEvent: "VTK",
    }

    @vtk.calldata_type(vtk.VTK_STRING)
    def _forward(_caller, event, text):
        kind = {"ErrorEvent": "VTK error", "WarningEvent": "VTK warning"}.get(event, "VTK")
        log.debug("%s: %s", kind, _one_line(text))

    _state["observers"] = [window.AddObserver(event, _forward) for event in levels]
    _state["vtk_callback"] = _forward  # keep the callable alive
    _state["window"] = window
    _install_simpleitk()
    _state["installed"] = True


def _install_simpleitk() -> None:
    try:
        import SimpleITK as sitk
    except ImportError:  # pragma: no cover - SimpleITK is a dependency
        return
    if not hasattr(sitk, "LoggerBase"):  # older SimpleITK: at least keep it quiet
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        return

    class _ToLog(sitk.LoggerBase):
        def DisplayText(self, text):  # noqa: N802 - ITK's names
            log.debug("ITK: %s", _one_line(text))

        def DisplayErrorText(self, text):  # noqa: N802
            log.debug("ITK error: %s", _one_line(text))

        def DisplayWarningText(self, text):  # noqa: N802
            log.debug("ITK warning: %s", _one_line(text))

        def DisplayGenericOutputText(self, text):  # noqa: N802
            log.debug("ITK: %s", _one_line(text))

        def DisplayDebugText(self, text):  # noqa: N802
            log.debug("ITK debug: %s", _one_line(text))

    logger = _ToLog()
    logger.SetAsGlobalITKLogger()
    _state["itk_logger"] = logger


@contextmanager
def native_stdout_to_stderr() -> Iterator[None]:
    """While the block runs, native writes to fd 1 go to stderr; Python's stdout stays stdout.

    Only when `sys.stdout` is the process's real stdout (not under a test's capture).
    """
    try:
        real = sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2
    except (AttributeError, ValueError, OSError):
        real = False
    if not real:
        yield
        return
    sys.stdout.flush()
    saved_fd = os.dup(1)
    os.dup2(2, 1)
    original = sys.stdout
    sys.stdout = os.fdopen(os.dup(saved_fd), "w", encoding=original.encoding or "utf-8", errors="replace")
    try:
        yield
    finally:
        try:
            sys.stdout.flush()
        finally:
            sys.stdout.close()
            sys.stdout = original
            os.dup2(saved_fd, 1)
            os.close(saved_fd)
