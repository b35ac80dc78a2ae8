"""Errors of print preparation: each names the part at fault and how to fix it."""

from __future__ import annotations

from VSPCoreLib.errors import InputDataError


class PrintPrepError(InputDataError):
    """A model or a parameter that print preparation cannot use as it is (`vsp` exits 2)."""


class BooleanError(PrintPrepError):
    """A mesh boolean (union, difference, split) that failed or gave an empty or broken result."""
