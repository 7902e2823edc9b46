"""Which libvirt URIs the dashboard opens: an allow-list.

A host's URI is opened by the worker every minute and, as a peer URI, by the
source host's root libvirtd for peer-to-peer migration. libvirt's URI options
can make it run a program (``command=``, ``netcat=``, ``proxy=``), read files
of the writer's choosing (``keyfile=``, ``known_hosts=``, ``pkipath=``,
``test:///<file>``), open any socket (``socket=``) or stop checking the
server (``no_verify=``), so a URI is refused unless it is one of:

    qemu+ssh://[user@]host[:port]/system     option no_tty=0|1
    qemu+tls://host[:port]/system            (pkipath is the dashboard's own, added at connect time)
    qemu+tcp://host[:port]/system            (peer-to-peer on a trusted migration network)
    qemu:///system                           the local daemon
    qemu+unix:///system                      option socket=PATH, PATH below settings.LIBVIRT_SOCKET_DIRS
    test:///default                          only when settings.LIBVIRT_ALLOW_TEST_DRIVER

`check_uri` is the policy (a ValidationError naming the part and the fix);
`hosts.models.validate_libvirt_uri` uses it for Host.uri and Host.peer_uri,
and `require_allowed` re-checks a URI just before it is opened (a row written
before the allow-list, or by SQL), as a GatewayError.

The query is read as libvirt reads it: ``&`` separates options and, when no
``&`` follows, so does ``;``; names and values are percent-decoded. Neither
``;`` nor ``%`` is accepted, so what is checked here is what libvirt sees.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import PurePosixPath
from typing import NoReturn

from django.conf import settings
from django.core.exceptions import ValidationError

EXAMPLES = "qemu+ssh://root@host/system, qemu+tls://host/system, qemu+tcp://10.0.0.2/system or qemu:///system"
REMOTE_SCHEMES = ("qemu+ssh", "qemu+tls", "qemu+tcp")
LOCAL_SCHEMES = ("qemu", "qemu+unix")
SCHEMES = (*REMOTE_SCHEMES, *LOCAL_SCHEMES, "test")
TEST_URI = "test:///default"

# scheme://authority/path?query#fragment, on printable ASCII (checked first).
_URI = re.compile(
    r"(?P<scheme>[^:/?#]*)://(?P<authority>[^/?#]*)(?P<path>[^?#]*)(?:\?(?P<query>[^#]*))?(?:#(?P<fragment>.*))?",
    re.DOTALL,
)
_USER = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]*")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,40}")  # an option name safe to repeat in a message
_PATH_CHARS = re.compile(r"[A-Za-z0-9._/+@,:~-]+")

# Why each option libvirt knows is refused, in plain words.
_REFUSED_OPTIONS = {
    "command": "makes libvirt run a program instead of ssh",
    "netcat": "names the program libvirt runs on the remote host to reach its daemon",
    "proxy": "chooses the program libvirt runs on the remote host to reach its daemon",
    "mode": "chooses which daemon the remote end connects to",
    "keyfile": "makes ssh read a private key file named in the URI",
    "known_hosts": "makes libvirt read the host keys from a file named in the URI",
    "known_hosts_verify": "changes whether the ssh host key is checked",
    "sshauth": "changes how ssh authenticates",
    "no_verify": "turns off the check of the host's TLS certificate",
    "pkipath": (
        "names the directory libvirt reads TLS keys from; the dashboard sets it itself from the TLS "
        "material assigned to the host (Certificates page)"
    ),
    "tls_priority": "changes the TLS ciphers and versions",
    "name": "changes the URI the remote daemon opens",
    "no_tty": "applies to qemu+ssh only",
    "socket": "names the socket libvirt opens, which only qemu+unix may do",
    "authfile": "makes libvirt read credentials from a file named in the URI",
}


def _refuse(message: str, code: str) -> NoReturn:
    raise ValidationError(message, code=code)


def socket_dirs() -> list[str]:
    """settings.LIBVIRT_SOCKET_DIRS, absolute and normalised, read at call time."""
    return [os.path.normpath(os.path.abspath(str(d))) for d in getattr(settings, "LIBVIRT_SOCKET_DIRS", None) or []]


def test_driver_allowed() -> bool:
    return bool(getattr(settings, "LIBVIRT_ALLOW_TEST_DRIVER", False))


def allowed_options() -> str:
    dirs = socket_dirs()
    if dirs:
        return f"Allowed options: no_tty (qemu+ssh) and socket (qemu+unix, below {' or '.join(dirs)})."
    return "Allowed options: no_tty (qemu+ssh); socket is not accepted (no LIBVIRT_SOCKET_DIRS are configured)."


def _named(name: str) -> str:
    return f"{name}=" if _NAME.fullmatch(name) else "an option with unusual characters"


def check_uri(value: str) -> None:
    """Refuse `value` (a ValidationError naming the offending part and the fix)
    unless it is on the allow-list. This is the check for a stored URI: a
    pkipath= option is refused, since the dashboard adds its own at connect time."""
    if not isinstance(value, str) or not value:
        _refuse(f"Enter a libvirt URI such as {EXAMPLES}.", "uri_empty")
    for char in value:
        if char.isspace() or not char.isprintable():
            _refuse("The URI contains a space or an invisible (control) character; remove it.", "uri_character")
        if not char.isascii():
            _refuse(
                "The URI contains a non-ASCII character; write host names in ASCII (punycode) and remove the rest.",
                "uri_character",
            )
    match = _URI.fullmatch(value)
    if match is None:
        _refuse(f"Use a libvirt URI such as {EXAMPLES}.", "uri_scheme")
    scheme, authority, path = match["scheme"], match["authority"], match["path"]
    query, fragment = match["query"], match["fragment"]
    if scheme not in SCHEMES:
        accepted = [s for s in SCHEMES if s != "test" or test_driver_allowed()]
        if scheme.endswith("+ext"):
            _refuse(
                f"The {scheme}:// transport makes libvirt run a program; use a libvirt URI such as {EXAMPLES}.",
                "uri_scheme",
            )
        _refuse(
            f"Use a libvirt URI such as {EXAMPLES} (the scheme must be one of: {', '.join(accepted)}).",
            "uri_scheme",
        )
    if fragment is not None:
        _refuse("The URI has a fragment (#...), which libvirt does not use; remove it.", "uri_fragment")
    if scheme == "test":
        _check_test_uri(value)
        return
    _check_path(scheme, path)
    _check_authority(scheme, authority)
    _check_query(scheme, query)


def _check_test_uri(value: str) -> None:
    if value != TEST_URI:
        _refuse(
            "A test:// URI other than test:///default makes libvirt's test driver read a file from the dashboard's "
            "machine; only test:///default is accepted.",
            "uri_test_driver",
        )
    if not test_driver_allowed():
        _refuse(
            "libvirt's test driver (test:///default) is only accepted in the demo and the tests "
            "(LIBVIRT_ALLOW_TEST_DRIVER); use a real host's URI such as qemu+ssh://root@host/system.",
            "uri_test_driver",
        )


def _check_path(scheme: str, path: str) -> None:
    if path == "/system":
        return
    example_host = "host" if scheme in REMOTE_SCHEMES else ""
    if path == "/session":
        _refuse(
            "The URI ends in /session, a per-user daemon whose VMs are that user's own; the dashboard manages "
            "the system daemon's VMs: end the URI with /system.",
            "uri_path",
        )
    _refuse(
        f"The URI must end with /system (the system daemon), e.g. {scheme}://{example_host}/system.",
        "uri_path",
    )


def _check_authority(scheme: str, authority: str) -> None:
    if scheme in LOCAL_SCHEMES:
        if authority:
            if scheme == "qemu":
                _refuse(
                    "qemu:// with a host name connects over TLS; write qemu+tls://host/system, "
                    "or qemu:///system (three slashes) for this machine's daemon.",
                    "uri_host",
                )
            _refuse(
                f"A {scheme}:// URI reaches this machine and takes no host name: write {scheme}:///system.", "uri_host"
            )
        return
    userinfo, at, hostport = authority.rpartition("@")
    if at:
        if ":" in userinfo:
            _refuse(
                "The URI carries a password (user:password@); remove it and log in with an SSH key or a TLS "
                "certificate instead.",
                "uri_password",
            )
        if scheme != "qemu+ssh":
            _refuse(f"A user name (user@) applies to qemu+ssh only; remove it from the {scheme}:// URI.", "uri_user")
        if not _USER.fullmatch(userinfo):
            _refuse(
                "The user name may hold only letters, digits, '.', '_' and '-', and must not start with '-' "
                "(ssh would take it as an option); correct it.",
                "uri_user",
            )
    host, port = _split_port(hostport)
    if not host:
        _refuse(f"This URI needs a host name, e.g. {scheme}://host-b/system.", "uri_host")
    if host.startswith("-"):
        _refuse(
            "The host name starts with '-', which ssh would take as an option; "
            "write the host's DNS name or IP address.",
            "uri_host",
        )
    if not _valid_host(host):
        _refuse(
            "The host name is neither a DNS name (letters, digits and '-', in labels separated by dots) nor an "
            "IP address (IPv6 in brackets, e.g. [fd00::2]); correct it.",
            "uri_host",
        )
    if port is not None and not (_PORT.fullmatch(port) and 1 <= int(port) <= 65535):
        _refuse("The port after the host name must be a number from 1 to 65535; correct it or remove it.", "uri_port")


def _split_port(hostport: str) -> tuple[str, str | None]:
    if hostport.startswith("["):
        close = hostport.find("]")
        if close == -1:
            return hostport, None
        rest = hostport[close + 1 :]
        if rest.startswith(":"):
            return hostport[: close + 1], rest[1:]
        return hostport, None  # anything else after ']' fails the host check
    host, colon, port = hostport.partition(":")
    return (host, port) if colon else (host, None)


def _valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        if "%" in host:  # a zone index (fe80::1%eth0): Python accepts it, libvirt and ssh read it differently
            return False
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    name = host[:-1] if host.endswith(".") else host
    return 0 < len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split("."))


def _check_query(scheme: str, query: str | None) -> None:
    if not query:
        return
    if ";" in query or "%" in query:
        _refuse(
            "The URI options contain ';' or '%', which libvirt reads as a separator or an escape; write each "
            f"option plainly as name=value, separated by '&'. {allowed_options()}",
            "uri_option",
        )
    seen: set[str] = set()
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if not name:
            _refuse(
                f"The URI has an empty option ('&&', '?&' or '=value'); remove it. {allowed_options()}", "uri_option"
            )
        if name in seen:
            _refuse(f"The URI option {_named(name)} is given twice; give it once. {allowed_options()}", "uri_option")
        seen.add(name)
        if scheme == "qemu+ssh" and name == "no_tty":
            if value not in ("0", "1"):
                _refuse(f"The URI option no_tty= takes 0 or 1. {allowed_options()}", "uri_option")
        elif scheme == "qemu+unix" and name == "socket":
            _check_socket(value if eq else "")
        elif name in _REFUSED_OPTIONS:
            _refuse(f"The URI option {name}= {_REFUSED_OPTIONS[name]}; remove it. {allowed_options()}", "uri_option")
        else:
            _refuse(
                f"The URI option {_named(name)} is not one the dashboard accepts; remove it. {allowed_options()}",
                "uri_option",
            )


def _check_socket(value: str) -> None:
    dirs = socket_dirs()
    if not dirs:
        _refuse(
            "The URI option socket= is not accepted: no directory is configured for libvirt sockets "
            "(LIBVIRT_SOCKET_DIRS); remove it to use the system daemon's socket (qemu+unix:///system).",
            "uri_socket",
        )
    where = " or ".join(dirs)
    if (
        not value.startswith("/")
        or not _PATH_CHARS.fullmatch(value)
        or "//" in value
        or any(part in (".", "..") for part in value.split("/"))
        or os.path.normpath(value) != value
    ):
        _refuse(
            "The URI option socket= must be an absolute path without '..', '.', '//' or unusual characters, "
            f"below {where}; correct it.",
            "uri_socket",
        )
    path = PurePosixPath(value)
    if not any(path != PurePosixPath(d) and path.is_relative_to(d) for d in dirs):
        _refuse(
            "The URI option socket= names a path outside the directories for libvirt sockets; "
            f"use a socket below {where}.",
            "uri_socket",
        )


def refusal(uri: str) -> str | None:
    """Why `uri` is refused, in plain words; None when it is allowed."""
    try:
        check_uri(uri)
    except ValidationError as error:
        return " ".join(error.messages)
    return None


def require_allowed(uri: str, *, host_name: str, what: str = "libvirt URI") -> str:
    """`uri` itself, or a GatewayError saying it is not allowed and why: the
    last check before a stored URI is opened (or handed to a libvirtd)."""
    problem = refusal(uri)
    if problem is None:
        return uri
    from .gateway import GatewayError  # libvirt is imported by the gateway only, and only when needed

    raise GatewayError(
        f"The {what} of {host_name} is not allowed, so it is not opened: {problem} Edit the host to change it.",
        uri=uri,
        extra={"refused_uri": True},  # never tried: not a host that does not answer
    )
