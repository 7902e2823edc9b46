"""One error type for every libvirt failure, with advice in plain words."""

from __future__ import annotations

from typing import Any

import libvirt

from .constants import ErrorCode

# Plain-words advice for the libvirt error codes operators meet most.
ERROR_HINTS = {
    ErrorCode.NO_DOMAIN: "The VM is not on that host (any more). Refresh the inventory.",
    ErrorCode.OPERATION_INVALID: "The VM is not in a state that allows this; check that it is running.",
    ErrorCode.OPERATION_ABORTED: "The migration was aborted; the VM keeps running on the source.",
    ErrorCode.OPERATION_TIMEOUT: "libvirt timed out waiting for the job; check the host's load and network.",
    ErrorCode.SYSTEM_ERROR: "A system call failed on the host; the message names the file or socket.",
    ErrorCode.AUTH_FAILED: "Authentication to the host failed; check SSH keys or TLS certificates.",
    ErrorCode.NO_SUPPORT: "The host's libvirt or QEMU does not support this; choose other parameters.",
    ErrorCode.ARGUMENT_UNSUPPORTED: "The host's libvirt does not support one of the parameters.",
    ErrorCode.OPERATION_UNSUPPORTED: "The host's libvirt or QEMU does not support this operation.",
    ErrorCode.CPU_INCOMPATIBLE: (
        "The destination CPU cannot run this VM's CPU model; migrate between identical hosts."
    ),
    ErrorCode.MIGRATE_UNSAFE: (
        "libvirt does not recognise the storage as shared (it knows NFS, GFS2, OCFS2, CephFS and a few others). "
        "If the disks really are on shared storage mounted at the same path on both hosts, tick 'unsafe'."
    ),
    ErrorCode.OPERATION_FAILED: "The operation failed on the host; the message says why.",
    ErrorCode.INTERNAL_ERROR: "libvirt reported an internal error; the host's libvirtd log has details.",
}
NO_ANSWER_HINT = (
    "Check that libvirtd runs on the host and is not stuck (a stopped or overloaded daemon accepts "
    "connections and never answers), and the network to it."
)


class GatewayError(Exception):
    """A libvirt failure, with libvirt's own code, domain and message."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        domain: int | None = None,
        level: int | None = None,
        extra: dict[str, Any] | None = None,
        uri: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.domain = domain
        self.level = level
        self.extra = extra or {}
        self.uri = uri

    @classmethod
    def from_libvirt(cls, exc: libvirt.libvirtError, uri: str = "") -> GatewayError:
        err = exc.get_error_code(), exc.get_error_domain(), exc.get_error_level()
        extra = {
            "str1": exc.get_str1(),
            "str2": exc.get_str2(),
            "str3": exc.get_str3(),
            "int1": exc.get_int1(),
            "int2": exc.get_int2(),
        }
        return cls(
            exc.get_error_message() or str(exc),
            code=err[0],
            domain=err[1],
            level=err[2],
            extra={k: v for k, v in extra.items() if v not in (None, "", -1)},
            uri=uri,
        )

    @classmethod
    def no_answer(cls, uri: str, timeout_s: float, name: str = "") -> GatewayError:
        """The host did not answer within the gateway's own bound (not a
        timeout that libvirt reported)."""
        return cls(
            f"{name or uri} does not answer ({timeout_s:g} s).",
            code=ErrorCode.OPERATION_TIMEOUT,
            extra={"no_answer_s": timeout_s},
            uri=uri,
        )

    @property
    def no_answer_s(self) -> float | None:
        """The bound the host did not answer within; None for every other error."""
        if self.code != ErrorCode.OPERATION_TIMEOUT:
            return None
        return self.extra.get("no_answer_s")

    def naming(self, name: str) -> GatewayError:
        """This error, saying `name` where it says the host's URI."""
        if self.no_answer_s is None:
            return self
        return GatewayError.no_answer(self.uri, self.no_answer_s, name)

    @property
    def hint(self) -> str:
        if self.no_answer_s is not None:
            return NO_ANSWER_HINT
        return ERROR_HINTS.get(self.code, "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "code": self.code,
            "domain": self.domain,
            "level": self.level,
            "extra": self.extra,
            "hint": self.hint,
        }

    def __str__(self) -> str:
        return self.message
