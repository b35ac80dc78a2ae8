"""Errors that reach the user: each names the input at fault and how to fix it."""

from __future__ import annotations


class VSPError(Exception):
    """An error the user can act on.

    ``subject`` names the input (a file, a folder, a series, a node); ``fix`` says what to do.
    The `vsp` command prints ``str(error)`` and exits non-zero; the Slicer panels show it.
    """

    def __init__(self, message: str, *, subject: str | None = None, fix: str | None = None):
        self.message = message
        self.subject = subject
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.subject}: {self.message}" if self.subject else self.message
        if self.fix:
            text += f" Fix: {self.fix}"
        return text


class InputDataError(VSPError):
    """Input data (files, series, nodes) that cannot be used as it is."""
