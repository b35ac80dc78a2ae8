"""The connector's errors: VSPCoreLib's user errors, named for what failed.

Messages carry file names, servers and UIDs only, never patient names or IDs.
"""

from __future__ import annotations

from VSPCoreLib.errors import InputDataError, VSPError


class ConnectorError(VSPError):
    """A store, service or DICOM object problem the user can act on."""


class DicomObjectError(ConnectorError, InputDataError):
    """A DICOM object (SEG, encapsulated document) that cannot be written or read as it is."""
