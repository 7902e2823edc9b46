"""Signed anchors of the audit log's head, kept outside the database.

The keyed chain shows an event edited, inserted or removed before the
newest one, but not the newest events removed, nor the whole table emptied:
what is left still chains. An anchor records how many events the log had up
to its newest one, and that event's id and hash, signed with an HMAC under
a key of its own (derived like the chain key, with another salt):

    {"version": 1, "database": "postgresql:vmmigrator", "count": 1234,
     "head_id": 1240, "head_hash": "…", "at": "2025-06-01T12:00:00.123456Z",
     "signature": "…"}

`verify_audit` then checks that the anchored head is still there with the
same hash and that the log still has `count` events up to it.

Anchors are files in settings.AUDIT_ANCHOR_DIR (mode 0700, files 0600),
written atomically, named `anchor-<database tag>-<UTC time>.json` so that
databases sharing the directory (the demo's and the test suite's) never
judge nor prune each other's; the newest KEEP of each database are kept.
The worker writes one every AUDIT_ANCHOR_INTERVAL_S (`write_if_due`, from
its maintenance pass); `manage.py audit_anchor` writes one on demand, and
`--stdout` prints one to ship elsewhere: an anchor on this machine only
protects against someone who can write the database but not this directory.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connections

from . import chain

VERSION = 1
KEEP = 1000
PREFIX = "anchor-"
STAMP = "%Y%m%dT%H%M%S%fZ"
FIELDS = ("version", "database", "count", "head_id", "head_hash", "at")


class AnchorError(Exception):
    """An anchor that cannot be trusted: unreadable, malformed or badly signed."""


@dataclass(frozen=True)
class Anchor:
    count: int
    head_id: int | None
    head_hash: str
    at: str
    database: str
    signature: str
    version: int = VERSION
    path: Path | None = None

    def body(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "database": self.database,
            "count": self.count,
            "head_id": self.head_id,
            "head_hash": self.head_hash,
            "at": self.at,
        }

    def as_dict(self) -> dict[str, Any]:
        return {**self.body(), "signature": self.signature}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @property
    def taken_at(self) -> datetime:
        return datetime.fromisoformat(self.at.replace("Z", "+00:00"))

    def describe(self) -> str:
        head = f"up to event {self.head_id}" if self.head_id is not None else "(an empty log)"
        return f"{self.count} events {head}"


# ------------------------------------------------------------ signing


def _signature(body: dict[str, Any]) -> str:
    payload = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(chain.anchor_key(), payload, hashlib.sha256).hexdigest()


def parse(text: str, path: Path | None = None) -> Anchor:
    """An anchor from its JSON, its signature checked."""
    where = str(path) if path else "The anchor"
    try:
        data = json.loads(text)
    except ValueError as error:
        raise AnchorError(f"{where} is not JSON ({error}).") from None
    if not isinstance(data, dict) or set(data) != {*FIELDS, "signature"}:
        raise AnchorError(f"{where} is not an audit anchor: it needs exactly {', '.join(FIELDS)} and signature.")
    body = {name: data[name] for name in FIELDS}
    if body["version"] != VERSION:
        raise AnchorError(f"{where} is an anchor of version {body['version']!r}; this dashboard reads {VERSION}.")
    signature = data["signature"]
    if not isinstance(signature, str) or not hmac.compare_digest(signature.encode(), _signature(body).encode()):
        raise AnchorError(
            f"{where} has a bad signature: it was altered, or signed with another key "
            f"(the anchor key comes from {chain.key_source()})."
        )
    count, head_id = body["count"], body["head_id"]
    if not isinstance(count, int) or count < 0 or not (head_id is None or isinstance(head_id, int)):
        raise AnchorError(f"{where} is malformed: count and head_id must be whole numbers.")
    try:
        datetime.fromisoformat(str(body["at"]).replace("Z", "+00:00"))
    except ValueError:
        raise AnchorError(f"{where} is malformed: its time {body['at']!r} is not ISO 8601.") from None
    return Anchor(
        count=count,
        head_id=head_id,
        head_hash=str(body["head_hash"]),
        at=str(body["at"]),
        database=str(body["database"]),
        signature=signature,
        version=body["version"],
        path=path,
    )


def load(path: Path) -> Anchor:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise AnchorError(f"Cannot read the anchor {path}: {error.strerror or error}.") from None
    return parse(text, Path(path))


# ------------------------------------------------------------ taking one


def database_label(using: str = "default") -> str:
    """Which database an anchor is of: vendor and name (an SQLite file's path)."""
    connection = connections[using]
    name = str(connection.settings_dict.get("NAME") or "")
    if connection.vendor == "sqlite" and name and not name.startswith(("file:", ":memory:")):
        name = str(Path(name).resolve())
    return f"{connection.vendor}:{name}"


def database_tag(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()[:12]


def current_head() -> tuple[int, int | None, str]:
    """(events up to the newest, its id, its hash). Appends are serialised
    (the chain lock), so ids grow in commit order and counting up to the
    head stays right while new events arrive."""
    from .models import AuditEvent

    last = AuditEvent.objects.order_by("-pk").values_list("pk", "hash").first()
    if last is None:
        return 0, None, ""
    head_id, head_hash = last
    return AuditEvent.objects.filter(pk__lte=head_id).count(), head_id, head_hash


def take(now: datetime | None = None) -> Anchor:
    count, head_id, head_hash = current_head()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    body = {
        "version": VERSION,
        "database": database_label(),
        "count": count,
        "head_id": head_id,
        "head_hash": head_hash,
        "at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }
    return Anchor(**{**body, "signature": _signature(body)})


# ------------------------------------------------------------ the directory


def directory() -> Path:
    return Path(settings.AUDIT_ANCHOR_DIR)


def _pattern(tag: str) -> str:
    return f"{PREFIX}{tag}-*.json"


def anchor_files(folder: Path | None = None, tag: str | None = None) -> list[Path]:
    """This database's anchor files, oldest first (their names sort by time)."""
    folder = folder or directory()
    if not folder.is_dir():
        return []
    return sorted(folder.glob(_pattern(tag or database_tag(database_label()))))


def other_anchor_files(folder: Path | None = None) -> list[Path]:
    """Anchors in the directory taken of another database."""
    folder = folder or directory()
    if not folder.is_dir():
        return []
    mine = set(anchor_files(folder))
    return [path for path in folder.glob(f"{PREFIX}*.json") if path not in mine]


def newest_file(folder: Path | None = None) -> Path | None:
    files = anchor_files(folder)
    return files[-1] if files else None


def file_time(path: Path) -> datetime | None:
    """When an anchor was taken, read from its name (no need to open it)."""
    stamp = path.stem.rsplit("-", 1)[-1]
    try:
        return datetime.strptime(stamp, STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None


def write(anchor: Anchor, folder: Path | None = None, keep: int = KEEP) -> Path:
    """Write the anchor atomically (a 0600 temporary file renamed into place)
    and prune this database's anchors to the newest `keep`."""
    folder = folder or directory()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    tag = database_tag(anchor.database)
    final = folder / f"{PREFIX}{tag}-{anchor.taken_at.strftime(STAMP)}.json"
    fd, temporary = tempfile.mkstemp(prefix=".anchor-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(anchor.to_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, final)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _sync_directory(folder)
    for old in anchor_files(folder, tag)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return final


def _sync_directory(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_if_due(now: datetime | None = None) -> Path | None:
    """The worker's periodic anchor: written when this database's newest
    anchor is older than AUDIT_ANCHOR_INTERVAL_S (one directory listing when
    it is not; a count and a lookup when it is)."""
    now = now or datetime.now(UTC)
    newest = newest_file()
    taken = file_time(newest) if newest else None
    # A name dated in the future (a clock set back, a planted file) does not
    # hold anchoring off.
    if taken is not None and timedelta(seconds=-60) < now - taken < timedelta(seconds=settings.AUDIT_ANCHOR_INTERVAL_S):
        return None
    return write(take(now))
