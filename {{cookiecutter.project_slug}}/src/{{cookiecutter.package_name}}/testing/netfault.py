"""A TCP link to a server that a test can cut and heal: a network partition on loopback.

Point one client at ``link.url`` and another straight at the server, and ``cut()`` leaves the
first unable to reach the server while the second still can, as when a worker is partitioned
from Redis. Connections are real TCP; a cut closes the open ones and refuses new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit

__all__ = ["FaultyLink"]


class FaultyLink:
    """Forwards ``127.0.0.1:<port>`` to ``target_url``'s host and port until cut."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._parts = parts
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.is_cut = False

    @property
    def url(self) -> str:
        """The target URL with this link's address in place of the server's."""
        if self._server is None:
            raise RuntimeError("start() the link first")
        port = self._server.sockets[0].getsockname()[1]
        netloc = self._parts.netloc.rsplit("@", 1)
        address = f"127.0.0.1:{port}"
        return urlunsplit(
            self._parts._replace(netloc=f"{netloc[0]}@{address}" if len(netloc) == 2 else address)
        )

    async def start(self) -> FaultyLink:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    def cut(self) -> None:
        """Drop every open connection and refuse new ones."""
        self.is_cut = True
        for writer in list(self._writers):
            writer.close()

    def heal(self) -> None:
        """Accept and forward connections again."""
        self.is_cut = False

    async def aclose(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> FaultyLink:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.is_cut:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        self._writers.difference_update((writer, up_writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.is_cut:
                    break
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()
