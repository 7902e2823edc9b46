"""The error every check of uploaded material raises, worded for the person uploading it."""

from __future__ import annotations


class CertificateProblem(ValueError):
    """A problem with uploaded material, described for the person uploading it.

    ``message`` says what is wrong and how to fix it; it is safe to show in
    the UI as-is (it never contains key material or a stack trace).
    ``code`` is a short stable identifier (e.g. ``"expired"``) for tests,
    logging and UI logic; ``field`` names the form input the problem belongs
    to (``"cert"``, ``"key"``, ``"passphrase"``, ``"ca"``, ``"addresses"`` or
    ``None`` for problems not tied to an upload field) so a form can attach
    the error to the right input.
    """

    def __init__(self, message: str, *, code: str = "invalid", field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field

    def __str__(self) -> str:
        return self.message
