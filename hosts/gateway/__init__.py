"""The one place that talks to libvirt.

Views, forms and jobs call these functions and get plain dataclasses back;
every libvirt failure becomes a `GatewayError` carrying libvirt's code, domain
and message. Connections are opened with a timeout (a dead host must not hang
a page or a job), reused per process, and dropped as soon as they fail.

    constants    libvirt's numbers under names: states, job types, flags, parameters, error codes
    errors       GatewayError and its hints
    connections  the pool, connections opened with a timeout
    domain_xml   a domain's XML read without libvirt
    domains      the host's VMs: read, state, lifecycle
    facts        host capabilities, networks, CPU comparison, migration features, dirty rate
    storage      images on a host: probe, create, delete
    migration    MigrationSpec, MigrationRun and the job queries
"""

import libvirt

from .connections import DEFAULT_CONNECT_TIMEOUT_S, call, close_all, connection, open_connection
from .constants import (
    JOB_TYPE_NAMES,
    RUNNING_STATES,
    STATE_NAMES,
    SUPPORTS_MIGRATION_PIN_PARAM,
    DomainState,
    ErrorCode,
    JobType,
    MigrateFlag,
    MigrateParam,
)
from .domain_xml import parse_domain_xml
from .domains import (
    LIFECYCLE_ACTIONS,
    DiskInfo,
    InterfaceInfo,
    VMInfo,
    destroy_leftover,
    find_vm,
    list_vms,
    resume_vm,
    vm_info,
    vm_lifecycle,
    vm_state,
    wait_for,
)
from .errors import ERROR_HINTS, GatewayError
from .facts import (
    CpuVerdict,
    DirtyRate,
    HostInfo,
    MigrationFeatures,
    NetworkInfo,
    compare_guest_cpu,
    dirty_rate,
    host_info,
    migration_features,
)
from .migration import (
    MigrationOutcome,
    MigrationRun,
    MigrationSpec,
    abort_job,
    active_job,
    completed_job_stats,
    job_stats,
    migrate_flag_names,
    parse_cpuset,
)
from .storage import PathInfo, create_volume, delete_volume, path_info

# libvirt prints every error to stderr unless a handler is registered; errors
# reach callers as GatewayError instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "ERROR_HINTS",
    "JOB_TYPE_NAMES",
    "LIFECYCLE_ACTIONS",
    "RUNNING_STATES",
    "STATE_NAMES",
    "SUPPORTS_MIGRATION_PIN_PARAM",
    "DirtyRate",
    "DiskInfo",
    "DomainState",
    "ErrorCode",
    "GatewayError",
    "HostInfo",
    "InterfaceInfo",
    "JobType",
    "MigrateFlag",
    "MigrateParam",
    "MigrationFeatures",
    "MigrationOutcome",
    "MigrationRun",
    "MigrationSpec",
    "NetworkInfo",
    "PathInfo",
    "VMInfo",
    "abort_job",
    "active_job",
    "call",
    "close_all",
    "CpuVerdict",
    "compare_guest_cpu",
    "completed_job_stats",
    "connection",
    "create_volume",
    "delete_volume",
    "destroy_leftover",
    "dirty_rate",
    "find_vm",
    "host_info",
    "job_stats",
    "list_vms",
    "migrate_flag_names",
    "migration_features",
    "open_connection",
    "parse_cpuset",
    "parse_domain_xml",
    "path_info",
    "resume_vm",
    "vm_info",
    "vm_lifecycle",
    "vm_state",
    "wait_for",
]
