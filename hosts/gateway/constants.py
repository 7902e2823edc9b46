"""libvirt's numbers under names.

The dashboard compares states, job types, flags, parameters and error codes
through these names, so that no caller needs the binding or a bare number.
libvirt constants that one gateway function alone uses keep libvirt's own
name, where they are used.
"""

from enum import IntEnum, IntFlag, StrEnum

import libvirt


class DomainState(IntEnum):
    """virDomainState: the first item of dom.state()."""

    NOSTATE = libvirt.VIR_DOMAIN_NOSTATE
    RUNNING = libvirt.VIR_DOMAIN_RUNNING
    BLOCKED = libvirt.VIR_DOMAIN_BLOCKED
    PAUSED = libvirt.VIR_DOMAIN_PAUSED
    SHUTDOWN = libvirt.VIR_DOMAIN_SHUTDOWN
    SHUTOFF = libvirt.VIR_DOMAIN_SHUTOFF
    CRASHED = libvirt.VIR_DOMAIN_CRASHED
    PMSUSPENDED = libvirt.VIR_DOMAIN_PMSUSPENDED


# The words the inventory stores and the pages show.
STATE_NAMES = {
    DomainState.NOSTATE: "no state",
    DomainState.RUNNING: "running",
    DomainState.BLOCKED: "blocked",
    DomainState.PAUSED: "paused",
    DomainState.SHUTDOWN: "shutting down",
    DomainState.SHUTOFF: "shut off",
    DomainState.CRASHED: "crashed",
    DomainState.PMSUSPENDED: "suspended",
}
RUNNING_STATES = ("running", "blocked")


class JobType(IntEnum):
    """virDomainJobType: the "type" of a jobStats() reading."""

    NONE = libvirt.VIR_DOMAIN_JOB_NONE
    BOUNDED = libvirt.VIR_DOMAIN_JOB_BOUNDED
    UNBOUNDED = libvirt.VIR_DOMAIN_JOB_UNBOUNDED
    COMPLETED = libvirt.VIR_DOMAIN_JOB_COMPLETED
    FAILED = libvirt.VIR_DOMAIN_JOB_FAILED
    CANCELLED = libvirt.VIR_DOMAIN_JOB_CANCELLED


class JobOperation(IntEnum):
    """virDomainJobOperation: the "operation" of a jobStats() reading."""

    MIGRATION_IN = libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN
    MIGRATION_OUT = libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT


JOB_TYPE_NAMES = {
    JobType.NONE: "none",
    JobType.BOUNDED: "bounded",
    JobType.UNBOUNDED: "unbounded",
    JobType.COMPLETED: "completed",
    JobType.FAILED: "failed",
    JobType.CANCELLED: "cancelled",
}


class MigrateFlag(IntFlag):
    """The virDomainMigrateFlags that a MigrationSpec sets."""

    LIVE = libvirt.VIR_MIGRATE_LIVE
    PEER2PEER = libvirt.VIR_MIGRATE_PEER2PEER
    PERSIST_DEST = libvirt.VIR_MIGRATE_PERSIST_DEST
    UNDEFINE_SOURCE = libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    NON_SHARED_DISK = libvirt.VIR_MIGRATE_NON_SHARED_DISK
    UNSAFE = libvirt.VIR_MIGRATE_UNSAFE
    COMPRESSED = libvirt.VIR_MIGRATE_COMPRESSED
    AUTO_CONVERGE = libvirt.VIR_MIGRATE_AUTO_CONVERGE
    POSTCOPY = libvirt.VIR_MIGRATE_POSTCOPY
    POSTCOPY_RESUME = libvirt.VIR_MIGRATE_POSTCOPY_RESUME
    TLS = libvirt.VIR_MIGRATE_TLS
    PARALLEL = libvirt.VIR_MIGRATE_PARALLEL


class MigrateParam(StrEnum):
    """migrateToURI3's typed parameters that every supported libvirt knows.

    The multifd compression levels and openEuler's migration.pin exist only
    in some builds of the binding: MigrationSpec looks those up as it needs them.
    """

    URI = libvirt.VIR_MIGRATE_PARAM_URI
    BANDWIDTH = libvirt.VIR_MIGRATE_PARAM_BANDWIDTH
    MIGRATE_DISKS = libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS
    COMPRESSION = libvirt.VIR_MIGRATE_PARAM_COMPRESSION
    COMPRESSION_MT_LEVEL = libvirt.VIR_MIGRATE_PARAM_COMPRESSION_MT_LEVEL
    COMPRESSION_MT_THREADS = libvirt.VIR_MIGRATE_PARAM_COMPRESSION_MT_THREADS
    COMPRESSION_MT_DTHREADS = libvirt.VIR_MIGRATE_PARAM_COMPRESSION_MT_DTHREADS
    PARALLEL_CONNECTIONS = libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS


class ErrorCode(IntEnum):
    """The virErrorNumber values that the gateway and its callers tell apart."""

    INTERNAL_ERROR = libvirt.VIR_ERR_INTERNAL_ERROR
    NO_SUPPORT = libvirt.VIR_ERR_NO_SUPPORT
    OPERATION_FAILED = libvirt.VIR_ERR_OPERATION_FAILED
    SYSTEM_ERROR = libvirt.VIR_ERR_SYSTEM_ERROR
    NO_DOMAIN = libvirt.VIR_ERR_NO_DOMAIN
    AUTH_FAILED = libvirt.VIR_ERR_AUTH_FAILED
    NO_STORAGE_POOL = libvirt.VIR_ERR_NO_STORAGE_POOL
    NO_STORAGE_VOL = libvirt.VIR_ERR_NO_STORAGE_VOL
    OPERATION_INVALID = libvirt.VIR_ERR_OPERATION_INVALID
    OPERATION_TIMEOUT = libvirt.VIR_ERR_OPERATION_TIMEOUT
    ARGUMENT_UNSUPPORTED = libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED
    OPERATION_ABORTED = libvirt.VIR_ERR_OPERATION_ABORTED
    MIGRATE_UNSAFE = libvirt.VIR_ERR_MIGRATE_UNSAFE
    OPERATION_UNSUPPORTED = libvirt.VIR_ERR_OPERATION_UNSUPPORTED
    CPU_INCOMPATIBLE = libvirt.VIR_ERR_CPU_INCOMPATIBLE


# openEuler's libvirt pins migration threads itself; upstream libvirt lacks the parameter.
SUPPORTS_MIGRATION_PIN_PARAM = hasattr(libvirt, "VIR_MIGRATE_PARAM_MIGRATION_PIN")
