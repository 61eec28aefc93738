"""Structured logging with structlog, on top of livekit's stdlib logging.

livekit-agents logs through stdlib and, in `dev`/`start`, installs its own root handler
(coloured in dev, JSON in start); job processes forward stdlib records to the worker
with their extra attributes. So our loggers render to stdlib keyword arguments: every
bound field becomes a record attribute that livekit's formatters print and its
process boundary carries. Outside livekit's runner (CLI commands, `simulate`, tests)
`configure_logging` installs a structlog-formatted handler itself.

Privacy: never log transcript text or prompts at INFO, and log participants by
`identity_ref` (a short keyed hash), never by raw identity. `identity_ref` is the one
identity hash of the project: logs, store events and quarantine notes all use it, so one
participant has one name everywhere. Call `configure_identity_hash(settings)` once per
process, after loading the settings.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import sys
from typing import IO, TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from .settings import Settings

_configured = False

# The identity-hash key until configure_identity_hash() runs, and whenever neither
# IDENTITY_HASH_KEY nor LIVEKIT_API_SECRET is set (offline tests, `simulate`). It is public,
# so anyone can recompute these hashes: fine on a laptop, never what a deployment uses
# (`dev` and `start` need LIVEKIT_API_SECRET, which keys them).
DEVELOPMENT_IDENTITY_HASH_KEY = b"lkagent identity hash: development key, not secret"
_identity_key = DEVELOPMENT_IDENTITY_HASH_KEY


def setup_structlog() -> None:
    """Route structlog through stdlib; idempotent, safe in every process."""
    global _configured
    if _configured:
        return
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.stdlib.render_to_log_kwargs,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    _configured = True


def configure_logging(
    level: str = "INFO", *, json: bool | None = None, stream: IO[str] | None = None
) -> None:
    """Install a root handler for commands that run outside livekit's worker runner.

    Logs go to ``stream`` (default: stderr; `simulate` gives a file, so its stdout and the
    terminal show only the conversation). ``json=None`` picks a readable console format on
    a terminal and JSON elsewhere.
    """
    setup_structlog()
    stream = sys.stderr if stream is None else stream
    if json is None:
        json = not stream.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.set_name("structlog")
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == "structlog":
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # livekit is chatty at INFO outside a worker; its warnings still show.
    logging.getLogger("livekit").setLevel(max(logging.getLevelName(level), logging.WARNING))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A logger named after its module: ``logger = get_logger(__name__)``."""
    setup_structlog()
    return structlog.stdlib.get_logger(name)


def identity_hash_key(settings: Settings) -> bytes:
    """The deployment's identity-hash key: IDENTITY_HASH_KEY; else one derived from
    LIVEKIT_API_SECRET (every worker of a deployment has it, so all agree); else the
    public DEVELOPMENT_IDENTITY_HASH_KEY."""
    if settings.identity_hash_key is not None:
        return settings.identity_hash_key.get_secret_value().encode()
    if settings.livekit_api_secret is not None:
        secret = settings.livekit_api_secret.get_secret_value().encode()
        # a key of its own: the API secret itself never keys anything but LiveKit tokens
        return hashlib.sha256(b"identity-hash:" + secret).digest()
    return DEVELOPMENT_IDENTITY_HASH_KEY


def configure_identity_hash(settings: Settings) -> None:
    """Key `identity_ref` for this process from the settings (once, at start)."""
    global _identity_key
    _identity_key = identity_hash_key(settings)


def identity_ref(identity: str) -> str:
    """A participant in logs and events: ``p-`` and 12 hex digits of HMAC-SHA256 under the
    deployment's identity-hash key. Stable within a deployment; without the key it can be
    neither reversed nor recomputed (an unkeyed hash of a guessable id could be)."""
    return _keyed_ref(_identity_key, identity)


@functools.lru_cache(maxsize=4096)  # several log lines and events per participant and turn
def _keyed_ref(key: bytes, identity: str) -> str:
    digest = hmac.new(key, identity.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return "p-" + digest.hexdigest()[:12]


# Record attributes that carry a participant identity, in our logs and livekit's.
IDENTITY_FIELDS = ("identity", "participant_identity", "caller_identity")
# livekit marks personal data in its log records with this prefix (identities, user input).
PII_PREFIX = "lk.pii."


class RedactPersonalData(logging.Filter):
    """Keep personal data out of log records: identities become `identity_ref` hashes,
    other fields livekit marks as personal (``lk.pii.*``, such as what a user said) are
    replaced by their length.

    livekit logs some of these at INFO and WARNING (e.g. "RoomIO linked to participant");
    this filter on the handlers keeps them out of log collectors.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in list(record.__dict__.items()):
            if not isinstance(value, str):
                continue
            if name in IDENTITY_FIELDS or (
                name.startswith(PII_PREFIX) and name.endswith("identity")
            ):
                if not value.startswith("p-"):
                    record.__dict__[name] = identity_ref(value)
            elif name.startswith(PII_PREFIX):
                record.__dict__[name] = f"<redacted: {len(value)} characters>"
        return True


def redact_personal_data_in_logs() -> None:
    """Add `RedactPersonalData` to every root handler (idempotent); call once per process."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactPersonalData) for f in handler.filters):
            handler.addFilter(RedactPersonalData())


def bind_job_context(*, job_id: str, room: str, participant: str | None = None) -> dict[str, str]:
    """Bind job, room and participant to every log line of the current task and its children.

    Returns the fields, so the caller can hand them to livekit's
    ``JobContext.log_context_fields`` and livekit's own records carry them too.
    """
    fields = {"job_id": job_id, "room": room}
    if participant is not None:
        fields["participant"] = identity_ref(participant)
    structlog.contextvars.bind_contextvars(**fields)
    return fields
