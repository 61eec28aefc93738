"""A local Gemini Live server for offline tests: TLS, scripted replies, resumption, faults.

The real google-genai client (and so livekit's Gemini ``RealtimeModel``) connects to it
unchanged::

    async with LocalGeminiLiveServer() as srv:
        model = google.realtime.RealtimeModel(
            api_key="local-test-key",
            http_options=srv.http_options(),   # base_url + trust for the self-signed cert
        )

or with the environment alone (read when the genai Client is built)::

    GOOGLE_GEMINI_BASE_URL=srv.base_url  SSL_CERT_FILE=srv.cert_path  GOOGLE_API_KEY=...

It also answers google-genai's ``models.get`` (``GET /v1beta/models/NAME``), the cheap
request `doctor` checks a key with, refusing a key other than ``api_key`` as Google does
(HTTP 400, reason ``API_KEY_INVALID``).

The server keeps a history per conversation and issues resumption handles that name a
conversation as it was then (see :mod:`.state`); tests assert on :meth:`history` and
:attr:`connections`. Faults are armed for the next point they apply to (:meth:`arm`) or
injected into the live connection (:meth:`inject`, :meth:`inject_later`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from ...resilience.gemini.resume import CONTINUE_PROMPT
from . import protocol as proto
from .connection import LiveConnection, ReplyOptions, Responder, Transcriber
from .faults import ConnectionRecord, Drop, Fault, FaultRecord, GoAway
from .protocol import HistoryItem
from .state import ConversationStore, FaultPlan
from .tls import SelfSignedCertificate

if TYPE_CHECKING:
    from google.genai import types

__all__ = ["LocalGeminiLiveServer", "default_responder", "default_transcriber"]

logger = logging.getLogger(__name__)

# livekit's generate_reply() sends this user turn to make Gemini answer; it is not speech
REPLY_PLACEHOLDER = "."

# the REST path of models.get: /v1beta/models/gemini-... (the key in a header or ?key=)
_MODEL_PATH_RE = re.compile(r"^/v1(?:alpha|beta)?/models/(?P<model>[^/]+)$")


def default_responder(history: Sequence[HistoryItem]) -> str:
    """Answer ``reply to: <last user text>``, skipping livekit's "." reply placeholder.

    Asked to continue a cut reply (the resume handler's ``CONTINUE_PROMPT`` after the part
    already said), it answers with the rest of that reply, as a model picking up would.
    """
    for n in range(len(history) - 1, -1, -1):
        item = history[n]
        if item.role != "user" or item.text.strip() in ("", REPLY_PLACEHOLDER):
            continue
        if item.text == CONTINUE_PROMPT:
            return _rest_of_cut_reply(history[:n])
        return f"reply to: {item.text}"
    return "hello, how can I help?"


def _rest_of_cut_reply(before: Sequence[HistoryItem]) -> str:
    said_at = next((n for n in range(len(before) - 1, -1, -1) if before[n].role == "model"), None)
    if said_at is None:
        return default_responder(before)
    said, whole = before[said_at].text, default_responder(before[:said_at])
    return whole[len(said) :] if whole.startswith(said) else whole


def default_transcriber(pcm: bytes, sample_rate: int) -> str:
    """Name the audio turn by its length, since the server does not understand speech."""
    return f"audio turn of {len(pcm) * 1000 // (2 * sample_rate)} ms"


class LocalGeminiLiveServer:
    """Speaks the Gemini Live protocol on 127.0.0.1 over TLS with a self-signed certificate.

    Args:
        responder: the scripted model, ``history -> str | Reply`` (may be async).
        transcriber: ``(pcm, sample_rate) -> text`` for user audio turns.
        chunks: how many pieces each reply is streamed in.
        chunk_delay: seconds between pieces, so a fault can land mid-reply.
        audio_chunk_ms: length of the tone sent with each piece in AUDIO modality.
        silence_ms: quiet that ends a user audio turn (automatic activity detection).
        api_key: when set, connections must send this ``x-goog-api-key``: another key's
            setup is closed with 1007 "API key not valid. Please pass a valid API key." as
            Gemini does, and ``models.get`` refuses it (HTTP 400, ``API_KEY_INVALID``).
    """

    def __init__(
        self,
        *,
        responder: Responder = default_responder,
        transcriber: Transcriber = default_transcriber,
        chunks: int = 4,
        chunk_delay: float = 0.02,
        audio_chunk_ms: int = 60,
        silence_ms: int = 400,
        api_key: str | None = None,
    ) -> None:
        self._options = ReplyOptions(
            responder=responder,
            transcriber=transcriber,
            chunks=chunks,
            chunk_delay=chunk_delay,
            audio_chunk_ms=audio_chunk_ms,
            silence_ms=silence_ms,
        )
        self._api_key = api_key
        self._store = ConversationStore()
        self._faults = FaultPlan(self._notify)
        self._changed = asyncio.Event()
        self._live: dict[int, LiveConnection] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._cert: SelfSignedCertificate | None = None
        self._server: Server | None = None
        self.connections: list[ConnectionRecord] = []
        """Every connection so far, in the order they opened."""

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> LocalGeminiLiveServer:
        """Make the certificate and listen on a free port of 127.0.0.1."""
        self._cert = SelfSignedCertificate()
        self._server = await serve(
            self._serve,
            "127.0.0.1",
            0,
            ssl=self._cert.server_context(),
            process_request=self._check_request,
            ping_interval=None,  # keeps the records to protocol messages
            close_timeout=2,
            max_size=32 * 2**20,  # a long history replayed in one clientContent is large
        )
        logger.debug("local gemini live server listening", extra={"port": self.port})
        return self

    async def aclose(self) -> None:
        """Close every connection (1001), stop listening and delete the certificate."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(
            *(c.close(1001, "server shutting down") for c in list(self._live.values())),
            return_exceptions=True,
        )
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._cert is not None:
            self._cert.cleanup()
            self._cert = None

    async def __aenter__(self) -> LocalGeminiLiveServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- how clients reach it ----------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._server is None:
            raise RuntimeError("the server is not started; use `async with` or start()")
        return self._server.sockets[0].getsockname()[1]

    @property
    def base_url(self) -> str:
        """``https://127.0.0.1:PORT``: the genai ``base_url`` (it switches to wss itself)."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def cert_path(self) -> Path:
        """The self-signed certificate (PEM): a client's CA file, or ``SSL_CERT_FILE``."""
        if self._cert is None:
            raise RuntimeError("the server is not started; use `async with` or start()")
        return self._cert.cert_path

    def ssl_context(self) -> ssl.SSLContext:
        """A client SSL context that trusts this server's certificate."""
        if self._cert is None:
            raise RuntimeError("the server is not started; use `async with` or start()")
        return self._cert.client_context()

    def http_options(self, **overrides: Any) -> types.HttpOptions:
        """``google.genai.types.HttpOptions`` pointing at this server and trusting it.

        Pass it as ``RealtimeModel(http_options=...)`` or ``genai.Client(http_options=...)``.
        Build one per model: the livekit plugin writes its headers into the object.
        """
        from google.genai import types  # the genai client is optional for the server itself

        options: dict[str, Any] = {
            "base_url": self.base_url,
            "async_client_args": {"ssl": self.ssl_context()},
        }
        return types.HttpOptions(**(options | overrides))

    # -- faults ------------------------------------------------------------------------------

    def arm(self, *faults: Fault) -> None:
        """Queue faults; each fires once, at the next point where it applies."""
        for fault in faults:
            self._faults.arm(fault)

    @property
    def armed(self) -> tuple[Fault, ...]:
        """Faults armed but not yet fired."""
        return self._faults.armed

    @property
    def fault_log(self) -> list[FaultRecord]:
        """Every fault applied, in order."""
        return self._faults.log

    async def inject(self, fault: Drop | GoAway) -> ConnectionRecord:
        """Apply a drop or goAway to the newest live connection now; return its record."""
        if not isinstance(fault, Drop | GoAway):
            raise TypeError(f"only Drop and GoAway can be injected now; arm() {fault!r} instead")
        ready = [c for c in self._live.values() if c.record.setup_complete_after is not None]
        if not ready:
            raise RuntimeError("no live connection to inject into; arm() the fault instead")
        conn = ready[-1]
        await conn.apply(fault, "now")
        return conn.record

    def inject_later(self, fault: Drop | GoAway, delay: float) -> asyncio.Task[None]:
        """Inject a fault after ``delay`` seconds (into whatever connection is live then)."""

        async def later() -> None:
            await asyncio.sleep(delay)
            try:
                await self.inject(fault)
            except RuntimeError:
                logger.warning("scheduled fault found no live connection")

        task = asyncio.create_task(later(), name="gemini-local-inject")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def forget_handles(self, handle: str | None = None) -> None:
        """Make one handle (or every handle) unknown, as if it expired; resuming is refused."""
        self._store.forget(handle)

    # -- what the server holds ---------------------------------------------------------------

    def history(
        self, handle: str | None = None, *, connection: int | None = None
    ) -> list[HistoryItem]:
        """The server-side conversation.

        With ``handle``: the items that handle stands for. With ``connection``: the
        conversation that connection fed, as it is now. With neither: the conversation of
        the newest connection that got past setup.
        """
        if handle is not None:
            return self._store.snapshot(handle)
        records = (
            [self.connections[connection]] if connection is not None else self.connections[::-1]
        )
        for record in records:
            if record.conversation is not None:
                return list(self._store.get(record.conversation).items)
        return []

    async def wait_for(
        self,
        predicate: Callable[[], object],
        *,
        give_up_after: float = 10.0,
        what: str = "condition",
    ) -> None:
        """Wait until ``predicate()`` holds; it is checked after every server event.

        ``give_up_after`` only guards against a hang: the TimeoutError names ``what``.
        """
        try:
            async with asyncio.timeout(give_up_after):
                while not predicate():
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"gave up waiting for {what} after {give_up_after} s") from None

    # -- serving -----------------------------------------------------------------------------

    def _notify(self) -> None:
        # waiters hold the old event; swap first so a waiter re-arms on the new one
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if proto.match_live_path(request.path) is None:
            if (model := _MODEL_PATH_RE.match(request.path.split("?", 1)[0])) is not None:
                return self._get_model(connection, request, model["model"])
            return connection.respond(HTTPStatus.NOT_FOUND, "not a Gemini Live endpoint\n")
        return None

    def _get_model(self, connection: ServerConnection, request: Request, model: str) -> Response:
        """``models.get`` as the Gemini API answers it: the model, or Google's error shape."""
        query = parse_qs(urlsplit(request.path).query)
        key = request.headers.get("x-goog-api-key") or query.get("key", [""])[0]
        if not key:
            status, body = (
                HTTPStatus.FORBIDDEN,
                _google_error(
                    403,
                    "PERMISSION_DENIED",
                    "Method doesn't allow unregistered callers (callers without established "
                    "identity). Please use API Key or other form of API consumer identity to call "
                    "this API.",
                ),
            )
        elif self._api_key is not None and key != self._api_key:
            status, body = (
                HTTPStatus.BAD_REQUEST,
                _google_error(
                    400,
                    "INVALID_ARGUMENT",
                    "API key not valid. Please pass a valid API key.",
                    reason="API_KEY_INVALID",
                ),
            )
        else:
            status, body = (
                HTTPStatus.OK,
                {
                    "name": f"models/{model}",
                    "displayName": model,
                    "supportedGenerationMethods": ["bidiGenerateContent"],
                },
            )
        response = connection.respond(status, json.dumps(body))
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json; charset=UTF-8"
        return response

    async def _serve(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        record = ConnectionRecord(
            index=len(self.connections),
            api_version=proto.match_live_path(ws.request.path) or "",
            api_key_sent=bool(ws.request.headers.get("x-goog-api-key")),
            opened_at=time.monotonic(),
        )
        self.connections.append(record)
        conn = LiveConnection(
            ws,
            record,
            store=self._store,
            faults=self._faults,
            options=self._options,
            on_change=self._notify,
            key_accepted=self._api_key is None
            or ws.request.headers.get("x-goog-api-key") == self._api_key,
        )
        self._live[record.index] = conn
        self._notify()
        try:
            await conn.run()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.wait_closed(), 2)
            del self._live[record.index]
            record.closed_at = time.monotonic()
            record.closed_by = "server" if conn.server_closed else "client"
            record.close_code = ws.close_code
            logger.debug(
                "gemini connection closed",
                extra={"connection": record.index, "code": record.close_code},
            )
            self._notify()


def _google_error(code: int, status: str, message: str, *, reason: str = "") -> dict[str, Any]:
    """The JSON body of a Google API error (``google.rpc.Status``)."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if reason:
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ]
    return {"error": error}
