"""The one place that talks to libvirt.

Views, forms and jobs call these functions and get plain dataclasses back;
every libvirt failure becomes a `GatewayError` carrying libvirt's code, domain
and message. A host that does not answer must not hang a page or a job:
connections are opened with a timeout, reads run under a bound (`call`),
longer work relies on libvirt's keepalive; connections are reused per process
and dropped as soon as they fail.

    constants    libvirt's numbers under names: states, job types, flags, parameters, error codes
    errors       GatewayError and its hints
    events       libvirt's event loop, one thread per process, which keepalive needs
    connections  the bounds (configure), the pool, connections opened with a timeout, call
                 (work on a host within a bound), whether a daemon answers
    domain_xml   a domain's XML read without libvirt: ParsedDomain, DiskInfo, InterfaceInfo
    domains      the host's VMs: read, state, lifecycle; by name: define, start, destroy, undefine
    facts        host capabilities, networks, CPU comparison, migration features, dirty rate, warming
    storage      images on a host: probe, create, delete; dir pools
    migration    MigrationSpec, MigrationRun (and migrate_domain, unwatched), the job queries
"""

import libvirt

from .connections import (
    DEFAULT_CALL_TIMEOUT_S,
    DEFAULT_CONNECT_TIMEOUT_S,
    UNBOUNDED,
    GatewaySettings,
    answers,
    call,
    close_all,
    configure,
    connection,
    current_settings,
    open_connection,
)
from .constants import (
    JOB_TYPE_NAMES,
    RUNNING_STATES,
    STATE_NAMES,
    SUPPORTS_MIGRATION_PIN_PARAM,
    DomainState,
    ErrorCode,
    JobOperation,
    JobType,
    MigrateFlag,
    MigrateParam,
)
from .domain_xml import DiskInfo, InterfaceInfo, ParsedDomain, parse_domain_xml
from .domains import (
    LIFECYCLE_ACTIONS,
    DomainStatus,
    VMInfo,
    define_domain,
    destroy_domain,
    domain_status,
    find_vm,
    list_domains,
    list_vms,
    read_domain_xml,
    remove_stale_copy,
    resume_vm,
    start_domain,
    undefine_domain,
    vm_info,
    vm_lifecycle,
    vm_state,
    wait_for,
)
from .errors import ERROR_HINTS, GatewayError
from .events import event_loop_running, event_loop_turns
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
    warm,
)
from .migration import (
    RESUME_PROGRESS_S,
    JobAction,
    MigrationOutcome,
    MigrationRun,
    MigrationSpec,
    Placement,
    abort_job,
    active_job,
    completed_job_stats,
    forget_inactive_copy,
    job_stats,
    migrate_domain,
    migrate_flag_names,
    parse_cpuset,
    placement,
)
from .storage import PathInfo, create_volume, delete_volume, ensure_dir_pool, path_info, refresh_pool

# libvirt prints every error to stderr unless a handler is registered; errors
# reach callers as GatewayError instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

__all__ = [
    "RESUME_PROGRESS_S",
    "DEFAULT_CALL_TIMEOUT_S",
    "DEFAULT_CONNECT_TIMEOUT_S",
    "ERROR_HINTS",
    "JOB_TYPE_NAMES",
    "LIFECYCLE_ACTIONS",
    "RUNNING_STATES",
    "STATE_NAMES",
    "SUPPORTS_MIGRATION_PIN_PARAM",
    "UNBOUNDED",
    "CpuVerdict",
    "DirtyRate",
    "DiskInfo",
    "DomainState",
    "DomainStatus",
    "ErrorCode",
    "GatewayError",
    "GatewaySettings",
    "HostInfo",
    "InterfaceInfo",
    "JobAction",
    "JobOperation",
    "JobType",
    "MigrateFlag",
    "MigrateParam",
    "MigrationFeatures",
    "MigrationOutcome",
    "MigrationRun",
    "MigrationSpec",
    "NetworkInfo",
    "ParsedDomain",
    "PathInfo",
    "Placement",
    "VMInfo",
    "abort_job",
    "active_job",
    "answers",
    "call",
    "close_all",
    "compare_guest_cpu",
    "completed_job_stats",
    "configure",
    "connection",
    "create_volume",
    "current_settings",
    "define_domain",
    "delete_volume",
    "destroy_domain",
    "remove_stale_copy",
    "dirty_rate",
    "domain_status",
    "ensure_dir_pool",
    "event_loop_running",
    "event_loop_turns",
    "find_vm",
    "forget_inactive_copy",
    "host_info",
    "job_stats",
    "list_domains",
    "list_vms",
    "migrate_domain",
    "migrate_flag_names",
    "migration_features",
    "open_connection",
    "parse_cpuset",
    "parse_domain_xml",
    "path_info",
    "placement",
    "read_domain_xml",
    "refresh_pool",
    "resume_vm",
    "start_domain",
    "undefine_domain",
    "vm_info",
    "vm_lifecycle",
    "vm_state",
    "wait_for",
    "warm",
]
