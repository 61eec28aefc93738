"""Every setting the worker reads, typed and validated once at start.

Values come from the environment, then `.env.local` (like LiveKit's starter), then the
defaults below. A missing or invalid value becomes a `SettingsError` whose lines each
name the variable and say what to set; the CLI prints them and exits non-zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from .resilience.store.retention import RetentionTiers

StackName = Literal["gemini-live", "openai-realtime", "openai-pipeline"]
RoomMode = Literal["one-to-one", "multi-participant"]

ENV_FILE = ".env.local"


class SettingsError(Exception):
    """Settings are missing or invalid; ``problems`` holds one line per variable."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class Settings(BaseSettings):
    """The worker's configuration. Field names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(
        env_file=ENV_FILE,
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    # LiveKit: needed to run the worker and to mint tokens, not for `simulate`.
    livekit_url: str | None = None
    livekit_api_key: str | None = None
    livekit_api_secret: SecretStr | None = None
    agent_name: str = Field(
        default="{{ cookiecutter.agent_name }}",
        max_length=64,
    )

    # Models.
    model_stack: StackName = "{{ cookiecutter.model_stack }}"
    # Where a conversation moves when its model stays unreachable (unset: restart on it).
    fallback_model_stack: StackName | None = None
    google_api_key: SecretStr | None = None
    openai_api_key: SecretStr | None = None
    gemini_model: str = "gemini-2.5-flash-native-audio-preview-12-2025"
    gemini_voice: str = "Puck"
    gemini_base_url: str | None = None
    openai_realtime_model: str = "gpt-realtime"
    openai_voice: str = "marin"
    openai_llm_model: str = "gpt-4.1-mini"
    openai_stt_model: str = "gpt-4o-mini-transcribe"
    openai_tts_model: str = "gpt-4o-mini-tts"

    # The worker's HTTP server (health check at /). Unset: livekit's defaults, all interfaces
    # on port 8081 in `start` and any free port in `dev`. WORKER_PORT=0: any free port, so
    # several workers can run on one host.
    worker_host: str | None = None
    worker_port: int | None = Field(default=None, ge=0, le=65535)
    # The host's CPU load (0-1, averaged over 2.5 s) at which this worker takes no new job,
    # a re-dispatched room included. Unset: livekit's 0.7 in `start`, no limit in `dev`.
    # LiveKit Cloud ignores it (its own limit applies).
    worker_load_threshold: float | None = Field(default=None, gt=0, le=1)

    # Rooms and sessions.
    room_mode: RoomMode = "{{ cookiecutter.room_mode }}"
    # Seconds a room's primary worker holds its lease between renewals (renewed every third
    # of it). When its worker dies, a standby or another worker's room watcher takes the room
    # over at most this long (plus one poll) after its last renewal. A store outage or a
    # stalled event loop never costs the room (store/leases.py), so it can be short.
    room_lease_s: float = Field(default=3.0, gt=0, le=60)
    # What a second worker in the same room does: wait to take over, or leave.
    room_standby: Literal["wait", "leave"] = "wait"
    # Serve Prometheus metrics (livekit's and this project's, every job process summed) on
    # http://WORKER_HOST:METRICS_PORT/metrics; unset: no metrics endpoint.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    redis_url: str | None = None
    redis_cluster: bool = False
    # Without REDIS_URL: the SQLite file every job and worker process on this host shares, so
    # conversations outlive jobs and worker restarts. A relative path starts at the working
    # directory (like .env.local). ":memory:" keeps records inside each process (tests).
    session_db_path: str = Field(default=".data/sessions.sqlite3", min_length=1)
    # First part of every Redis key and of the events channel `<prefix>:events`.
    redis_prefix: str = Field(default="lkagent", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    session_retention_s: float = Field(default=300.0, gt=0)
    # Longer retention for engaged participants: "score:duration,..." (e.g. 3:1d,20:30d),
    # score = returns + turns // 10 (resilience/store/retention.py). A record is kept as long
    # as the highest tier its score reaches, SESSION_RETENTION_S below the first (unset: all).
    session_retention_tiers: str | None = None
    # How long a record found corrupt is kept aside for `sessions quarantine` / `restore`
    # (unset: as long as SESSION_RETENTION_S).
    session_quarantine_s: float | None = Field(default=None, gt=0)
    session_max_records: int = Field(default=10_000, gt=0)
    # What one participant may store (see StorageLimits): an item or transcript line over
    # SESSION_MAX_ENTRY_BYTES has its texts cut (marked "[trimmed]"); past SESSION_MAX_ENTRIES
    # or SESSION_MAX_HISTORY_BYTES per list, the oldest entries are dropped and counted.
    session_max_entry_bytes: int = Field(default=64 * 1024, ge=1024)
    session_max_entries: int = Field(default=5000, gt=0)
    session_max_history_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    session_encryption_keys: SecretStr | None = None
    # Key of the participant hashes in logs and events (HMAC-SHA256). Unset: derived from
    # LIVEKIT_API_SECRET; set it to keep the hashes stable when that secret is rotated.
    identity_hash_key: SecretStr | None = None
    # Tell the model in its context when its session was restarted (off: restarts are silent).
    note_restarts: bool = False

    # Logging: "auto" is readable on a terminal and JSON elsewhere.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("livekit_url")
    @classmethod
    def _check_livekit_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parsed = urlparse(value)
        if parsed.scheme not in ("ws", "wss", "http", "https") or not parsed.netloc:
            raise ValueError(
                "must be a LiveKit server URL such as wss://my-project.livekit.cloud "
                "or ws://localhost:7880"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        from .resilience.store.redis_url import check_redis_url

        check_redis_url(value)  # InvalidInputError (a ValueError) saying why, secrets redacted
        return value

    @field_validator("redis_cluster")
    @classmethod
    def _check_redis_cluster(cls, value: bool, info: ValidationInfo) -> bool:
        url = info.data.get("redis_url")
        if value and url:
            from .resilience.store.redis_url import check_redis_url

            check_redis_url(url, cluster=True)
        return value

    @field_validator("gemini_base_url")
    @classmethod
    def _check_gemini_base_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError("must be an https:// URL of a Gemini Live endpoint")
        return value.rstrip("/")

    @field_validator("session_encryption_keys")
    @classmethod
    def _check_encryption_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        from .resilience.store import KeyRing

        KeyRing.parse(value.get_secret_value())  # raises KeyRingError (a ValueError) saying why
        return value

    @field_validator("session_retention_tiers")
    @classmethod
    def _check_retention_tiers(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not value.strip():
            return None
        base = info.data.get("session_retention_s")
        if base is not None:  # else SESSION_RETENTION_S is invalid, and said so once
            from .resilience.store.retention import RetentionTiers

            RetentionTiers.parse(value, base=base)  # InvalidInputError (a ValueError) saying why
        return value.strip()

    @field_validator("identity_hash_key")
    @classmethod
    def _check_identity_hash_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters of random text (e.g. 32 hex bytes)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    # What each command needs, beyond what every field validates on its own.

    def livekit_problems(self) -> list[str]:
        """What is missing to talk to a LiveKit server."""
        problems = []
        if not self.livekit_url:
            problems.append(
                "LIVEKIT_URL is not set: set it to your LiveKit server URL "
                "(e.g. wss://my-project.livekit.cloud) in .env.local or the environment"
            )
        if not self.livekit_api_key:
            problems.append(
                "LIVEKIT_API_KEY is not set: copy it from your LiveKit project settings"
            )
        if not self.livekit_api_secret:
            problems.append(
                "LIVEKIT_API_SECRET is not set: copy it from your LiveKit project settings"
            )
        return problems

    def retention_tiers(self) -> RetentionTiers:
        """SESSION_RETENTION_TIERS over SESSION_RETENTION_S: the stores' retention policy."""
        from .resilience.store.retention import RetentionTiers

        return RetentionTiers.parse(self.session_retention_tiers, base=self.session_retention_s)

    def fallback_settings(self) -> Settings | None:
        """These settings with the fallback model stack, or None when there is none."""
        if self.fallback_model_stack in (None, self.model_stack):
            return None
        return self.model_copy(update={"model_stack": self.fallback_model_stack})

    def model_problems(self) -> list[str]:
        """What is missing to build the chosen model stacks (and the transcribers)."""
        problems = self._stack_problems()
        fallback = self.fallback_settings()
        if fallback is not None:
            problems += [
                f"{problem} (FALLBACK_MODEL_STACK={fallback.model_stack})"
                for problem in fallback._stack_problems()
                if problem not in problems
            ]
        return problems

    def _stack_problems(self) -> list[str]:
        if self.model_stack == "gemini-live" and not self.google_api_key:
            return [
                "GOOGLE_API_KEY is not set: MODEL_STACK=gemini-live needs a Gemini API key "
                "(https://aistudio.google.com/apikey)"
            ]
        if self.model_stack.startswith("openai") and not self.openai_api_key:
            return [
                f"OPENAI_API_KEY is not set: MODEL_STACK={self.model_stack} needs an OpenAI "
                "API key (https://platform.openai.com/api-keys)"
            ]
        if self.room_mode == "multi-participant" and not self.openai_api_key:
            return [
                "OPENAI_API_KEY is not set: ROOM_MODE=multi-participant transcribes each "
                f"participant with OpenAI speech-to-text ({self.openai_stt_model})"
            ]
        return []

    def require(self, *, livekit: bool = False, models: bool = False) -> Settings:
        """Raise `SettingsError` unless what the command needs is present."""
        problems = (self.livekit_problems() if livekit else []) + (
            self.model_problems() if models else []
        )
        if problems:
            raise SettingsError(problems)
        return self

    # Conversation summaries (summary.py). Past SUMMARY_MAX_TURNS messages or SUMMARY_MAX_TOKENS
    # estimated tokens in the model's context (0: no such limit; both 0: no summaries), older
    # turns are folded into a summary in the background; the model keeps it and the last
    # SUMMARY_KEEP_TURNS messages, people the whole transcript. SUMMARY_MODEL (openai/<model> or
    # google/<model>, with that provider's key) writes them; unset: the stack's LLM (a realtime
    # stack has none, so its conversations are not summarised without SUMMARY_MODEL).
    summary_max_turns: int = Field(default=200, ge=0)
    summary_max_tokens: int = Field(default=32_000, ge=0)
    summary_keep_turns: int = Field(default=40, ge=2)
    summary_model: str | None = None

    @field_validator("summary_keep_turns")
    @classmethod
    def _check_summary_keep_turns(cls, value: int, info: ValidationInfo) -> int:
        most = info.data.get("summary_max_turns")
        if most and value >= most:
            raise ValueError(f"must be less than SUMMARY_MAX_TURNS ({most})")
        return value

    @field_validator("summary_model")
    @classmethod
    def _check_summary_model(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        provider, _, model = value.strip().partition("/")
        if provider not in ("openai", "google") or not model or any(c.isspace() for c in model):
            raise ValueError(
                "must be openai/<model> or google/<model>, e.g. openai/gpt-4.1-mini "
                "or google/gemini-2.5-flash"
            )
        return value.strip()


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings once; raise `SettingsError` with one line per problem."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors():
        variable = "_".join(str(part) for part in error["loc"]).upper() or "SETTINGS"
        got = error.get("input")
        shown = "" if isinstance(got, dict) or got is None else f" (got {_redact(variable, got)!r})"
        lines.append(f"{variable} is invalid: {_reason(error)}{shown}")
    return lines


def _reason(error: ErrorDetails) -> str:
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _redact(variable: str, value: object) -> object:
    if any(word in variable for word in ("KEY", "SECRET", "TOKEN", "PASSWORD")):
        return "***"
    if isinstance(value, str) and ("@" in value or "://" in value):
        # URLs may carry credentials (redis://user:password@host, ?sentinel_password=...)
        from .resilience.store.redis_url import redact_url

        return redact_url(value)
    return value
