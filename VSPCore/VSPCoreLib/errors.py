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


#: `vsp` exit codes for the errors below (2: bad input, 3: a bug; see the README's table).
EXIT_UNREACHABLE = 4
EXIT_CREDENTIALS = 5
EXIT_SERVER = 6


class RemoteError(VSPError):
    """A store or service (a server) could not do what was asked. ``exit_code`` tells the `vsp`
    command's exit status; messages name the server, never a password or a patient."""

    exit_code = EXIT_SERVER


class ServerUnreachableError(RemoteError):
    """No answer: connection refused, name not found, timeout, TLS handshake or certificate
    refused, or a gateway that stays unavailable (502/503/504) after the retries."""

    exit_code = EXIT_UNREACHABLE


class CredentialsError(RemoteError):
    """The server refused the credentials (401) or the user's rights (403)."""

    exit_code = EXIT_CREDENTIALS


class ServerResponseError(RemoteError):
    """The server answered with an error the user cannot fix from this side (5xx, 413, an
    answer that is not what DICOMweb promises)."""

    exit_code = EXIT_SERVER
