"""Errors that reach the user: each names the input at fault and how to fix it.

Shaped like ``SurgicalPlanningLib.errors.VSPError`` (which this package must not import), so the
`vsp` command and the Slicer panels show both the same way: ``"subject: message Fix: fix"``.
"""

from __future__ import annotations


class ConnectorError(Exception):
    """An error the user can act on.

    ``subject`` names the input (a file, a series, a node, a server); ``fix`` says what to do.
    Messages carry file names and UIDs only, never patient names or IDs.
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


class DicomObjectError(ConnectorError):
    """A DICOM object (SEG, encapsulated document) that cannot be written or read as it is."""
