"""What went wrong, in plain words.

libvirt reports most migration faults with the same few strings ("client
socket is closed", "End of file while reading data"), whichever side failed.
The job knows more than the string: whether its own connection to the source
died, whether each daemon answers now, what the message names. `explain`
turns that into a sentence that names the thing and what to do; libvirt's own
text stays beside it in the record.
"""

from __future__ import annotations

from dataclasses import dataclass

from hosts import gateway
from hosts.gateway import ErrorCode

# Substrings of libvirt/QEMU messages, lower-cased.
TLS = ("tls", "certificate", "handshake", "x509", "gnutls")
NO_SPACE = ("no space left on device", "enospc", "not enough space", "disk quota exceeded")
LINK_LOST = (
    "client socket is closed",
    "connection reset",
    "broken pipe",
    "end of file while reading data",
    "connection timed out",
    "unable to write to socket",
    "unable to read from socket",
    "no route to host",
    "network is unreachable",
    "keepalive",
    "failed to read from the migration stream",
    "channel error",
    "input/output error",
)


@dataclass(frozen=True)
class Circumstances:
    """What the job saw around the failure."""

    source_name: str
    destination_name: str
    source_answers: bool
    destination_answers: bool
    source_connection_lost: bool = False
    postcopy_started: bool = False


def explain(error: gateway.GatewayError | None, seen: Circumstances) -> str:
    """One sentence: what happened, and what the operator can do."""
    text = (error.message if error else "").lower()
    src, dst = seen.source_name, seen.destination_name
    if error is not None and error.code == ErrorCode.OPERATION_ABORTED:
        return "The migration was aborted."
    if any(word in text for word in NO_SPACE):
        return f"{dst} ran out of disk space while the disks were copied. Free space in its image directory and retry."
    if seen.source_connection_lost and seen.source_answers:
        return (
            f"The libvirt daemon on {src} restarted during the migration, which cancels the migration inside libvirt."
        )
    if not seen.source_answers:
        return f"The libvirt daemon on {src} stopped or does not answer. Check it (and restart it) on {src}."
    if not seen.destination_answers:
        return f"The libvirt daemon on {dst} stopped or does not answer. Check it (and restart it) on {dst}."
    if any(word in text for word in TLS):
        return (
            f"The encrypted (TLS) connection between {src} and {dst} could not be set up: {error.message} "
            "Check the migration certificates of both hosts."
        )
    if error is not None and error.code == ErrorCode.OPERATION_TIMEOUT:
        return f"libvirt gave up waiting: {src} or {dst} answered too slowly. Check their load and the network."
    if any(word in text for word in LINK_LOST) and seen.postcopy_started:
        return f"The connection between {src} and {dst} was lost during post-copy."
    if any(word in text for word in LINK_LOST):
        return (
            f"The connection between {src} and {dst} was lost during the migration. "
            "Check the network between them, then retry."
        )
    if error is None:
        return "The migration did not complete, and libvirt gave no reason."
    return f"libvirt stopped the migration: {error.message}"


class ExplainedFailure(gateway.GatewayError):
    """A failure whose message is the plain sentence; libvirt's code and text
    stay in its details. The sentence says what to do, so no generic hint."""

    @property
    def hint(self) -> str:
        return ""

    def as_dict(self) -> dict:
        return {**super().as_dict(), "libvirt_message": self.extra.get("libvirt_message", "")}


def with_libvirt_text(plain: str, error: gateway.GatewayError | None) -> ExplainedFailure:
    if error is None:
        return ExplainedFailure(plain)
    return ExplainedFailure(
        plain,
        code=error.code,
        domain=error.domain,
        level=error.level,
        extra={**error.extra, "libvirt_message": error.message},
        uri=error.uri,
    )
