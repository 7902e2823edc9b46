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

    @property
    def hint(self) -> str:
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
