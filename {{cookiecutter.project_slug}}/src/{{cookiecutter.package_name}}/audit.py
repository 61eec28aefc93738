"""The audit trail: one structured event each time a participant's stored conversation is
read, exported, imported, listed, counted, restored or purged, on a logger of its own.

Every such path calls :func:`audit` once per request, whatever its outcome: the RPC
``transcript.history`` (``resilience/rpc.py``) and the `sessions` / `transcript` operator
commands (``cli/sessions.py``). An event says who (``actor``: a participant's
``identity_ref``, or ``operator:<OS user>@<host>`` for a command), what (``action``,
``outcome`` and counts), which conversation (``participant`` and ``room_ref``, keyed hashes
under the identity-hash key: never a raw identity, room name or any transcript text) and when
(``at``, ISO 8601 UTC).

The events go to the stdlib logger ``AUDIT_LOGGER`` at INFO, whatever LOG_LEVEL says: its
level is set here, on import, unless configured before. A plain stdlib logger, not structlog:
an audit record carries exactly the documented fields and never a job's bound context. They
reach the process's log handlers like any record (a job process forwards them to the worker);
:class:`AuditFormatter` renders one as a JSON line for a sink of its own.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
from typing import Final

from .log import identity_ref

AUDIT_LOGGER: Final = __name__

# what was done to a stored conversation
TRANSCRIPT_READ: Final = "transcript.read"  # RPC transcript.history
SESSIONS_LIST: Final = "sessions.list"  # every stored session's identity and counts
SESSION_SHOW: Final = "session.show"  # one whole record, exported as JSON
SESSION_TRANSCRIPT: Final = "session.transcript"  # one record's transcript, printed
SESSION_PURGE: Final = "session.purge"  # a participant's, or a room's, records deleted
QUARANTINE_LIST: Final = "quarantine.list"  # records set aside as corrupt
QUARANTINE_RESTORE: Final = "quarantine.restore"  # a quarantined record moved back
SESSION_EXPORT: Final = "session.export"  # one record written to a file to move it
SESSION_IMPORT: Final = "session.import"  # a record from such a file written to the store
SESSIONS_STATS: Final = "sessions.stats"  # every stored session read to count them
ACTIONS: Final = frozenset(
    {
        TRANSCRIPT_READ,
        SESSIONS_LIST,
        SESSION_SHOW,
        SESSION_TRANSCRIPT,
        SESSION_PURGE,
        QUARANTINE_LIST,
        QUARANTINE_RESTORE,
        SESSION_EXPORT,
        SESSION_IMPORT,
        SESSIONS_STATS,
    }
)

OK: Final = "ok"
REFUSED: Final = "refused"  # declined: not the caller's conversation, a bad request
NOT_FOUND: Final = "not_found"  # nothing stored under that name
ERROR: Final = "error"  # the store could not answer, or a record could not be read
OUTCOMES: Final = frozenset({OK, REFUSED, NOT_FOUND, ERROR})

# the fields every event has, then the details an action adds (counts, codes: never text)
FIELDS: Final = ("at", "action", "outcome", "actor", "participant", "room_ref")
DETAILS: Final = (
    "scope",  # transcript.read: "participant" (the caller's own) or "room" (a meeting's)
    "segments",  # transcript segments returned or printed
    "items",  # conversation items in an exported record
    "records",  # records listed
    "sessions",  # records purged
    "quarantined",  # quarantined copies purged
    "unreadable",  # records that could not be read, left as they are
    "code",  # the RPC error code of a refusal
    "error",  # the kind of store error, e.g. StoreUnavailableError
    "decrypted",  # session.export: 1 when sealed data left the store readable (--decrypt)
    "replaced",  # session.import: records it overwrote (--replace)
    "refused",  # session.import of a bundle: records the store refused (there, in a call)
)

_logger = logging.getLogger(AUDIT_LOGGER)
if _logger.level == logging.NOTSET:
    # INFO whatever the root's level: LOG_LEVEL=WARNING must not drop the trail. livekit's
    # worker process checks this level too before handling a record a job process sent.
    _logger.setLevel(logging.INFO)


def room_ref(room: str) -> str:
    """A room in audit events: ``r-`` and 12 hex digits, keyed like ``identity_ref`` (and
    kept apart from identities' hashes by a prefix of its own inside the hash)."""
    return "r-" + identity_ref("\x00room\x00" + room).removeprefix("p-")


def operator_actor() -> str:
    """The operator running a command: ``operator:<login of the process's user>@<host>``."""
    try:
        import pwd  # not on Windows

        user = pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):  # no passwd entry for this uid (a container), or Windows
        user = f"uid-{os.getuid()}" if hasattr(os, "getuid") else os.environ.get("USERNAME", "?")
    return f"operator:{user}@{socket.gethostname()}"


def audit(
    action: str,
    *,
    actor: str,
    room: str | None,
    identity: str | None = None,
    outcome: str,
    **details: int | str | None,
) -> None:
    """Log one audit event: ``actor`` (an ``identity_ref`` or ``operator_actor()``) did
    ``action`` on ``identity``'s conversation in ``room`` (None: every participant, or every
    room), with ``outcome`` and ``details`` (counts and codes, never text). ``room`` and
    ``identity`` are raw names: they are logged only as keyed hashes."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown audit outcome {outcome!r}")
    for name, value in details.items():
        if name not in DETAILS or not isinstance(value, int | str | None):
            raise ValueError(f"audit detail {name}={value!r} is not one of {DETAILS}")
    event = {
        "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        "action": action,
        "outcome": outcome,
        "actor": actor,
        "participant": identity_ref(identity) if identity is not None else None,
        "room_ref": room_ref(room) if room is not None else None,
        **details,
    }
    _logger.info("audit", extra=event)


class AuditFormatter(logging.Formatter):
    """An audit record as one JSON object per line, with the event's fields only (not what
    handlers and livekit's job filters add to every record, such as the raw room name).

    For a handler of its own on ``AUDIT_LOGGER``: a file, syslog, a collector."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {name: getattr(record, name, None) for name in FIELDS}
        fields.update((name, getattr(record, name)) for name in DETAILS if hasattr(record, name))
        return json.dumps(fields, ensure_ascii=False)
