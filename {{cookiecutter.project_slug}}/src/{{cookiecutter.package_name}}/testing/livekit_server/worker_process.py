"""Start, kill and restart kit worker processes (:mod:`.kit_worker`) against a kit server.

    async with LocalLiveKitServer() as server:
        with KitWorkerProcess(server, env={"SESSION_DB_PATH": str(db)}) as worker:
            await worker.registered()
            ...
            worker.kill()          # kill -9 of the worker's main process

Each process gets the server's URL and keys, its own HTTP port (``WORKER_PORT=0``) and the
caller's settings; its log (JSON lines) is kept in a file and shown when it fails to start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .rooms import KitRoom
from .server import LocalLiveKitServer

__all__ = ["KitWorkerProcess", "holder_of", "start_workers"]


class KitWorkerProcess:
    """One worker process (the production worker with the kit's room and models)."""

    def __init__(
        self, server: LocalLiveKitServer, *, env: dict[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:  # fmt: skip
        self.server = server
        self.env = {
            **os.environ,
            "LIVEKIT_URL": server.url,
            "LIVEKIT_API_KEY": server.api_key,
            "LIVEKIT_API_SECRET": server.api_secret,
            "WORKER_PORT": "0",
            # the whole host's CPU load decides: a shared test machine busy elsewhere must not
            # turn a re-dispatched room away (the default 0.7 did, at random)
            "WORKER_LOAD_THRESHOLD": "1",
            **(env or {}),
        }
        if "METRICS_PORT" in self.env and "PROMETHEUS_MULTIPROC_DIR" not in self.env:
            # before the worker imports prometheus_client, as `agent.py start` does, so the
            # main process's metrics are served too
            self.env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="kit-metrics-")
        directory = log_dir or Path(tempfile.mkdtemp(prefix="kit-worker-"))
        self.log_path = directory / f"worker-{id(self):x}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._known: set[str] = set()

    def start(self) -> KitWorkerProcess:
        self._known = set(self.server.workers)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"{__package__}.kit_worker"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill_all reaches its jobs
            )
        return self

    @property
    def pid(self) -> int:
        """The worker's main process id (RuntimeError before :meth:`start`)."""
        if self.process is None:
            raise RuntimeError("the kit worker has not been started")
        return self.process.pid

    async def registered(self, within: float = 90.0) -> str:
        """Wait until it registered with the server; its worker id."""

        def new_worker() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the kit worker exited at start:\n{self.log_tail()}")
            return bool(set(self.server.workers) - self._known)

        try:
            await self.server.wait_for(new_worker, within)
        except TimeoutError:
            raise TimeoutError(f"the kit worker did not register:\n{self.log_tail()}") from None
        return next(iter(set(self.server.workers) - self._known))

    def owns(self, pid: int) -> bool:
        """Whether process ``pid`` is this worker or descends from it (its job processes)."""
        while pid > 1 and self.process is not None:
            if pid == self.process.pid:
                return True
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                return False
            pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent's pid
        return False

    def kill(self) -> None:
        """kill -9 of the worker's main process (its job processes notice on their own)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """End the worker and everything it started (its process group)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> KitWorkerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


async def start_workers(
    server: LocalLiveKitServer, count: int, *, env: dict[str, str], log_dir: Path | None = None
) -> list[KitWorkerProcess]:
    """``count`` worker processes with ``env``, started together; returns once all registered."""
    known = len(server.workers)
    workers = [KitWorkerProcess(server, env=env, log_dir=log_dir).start() for _ in range(count)]
    try:
        for worker in workers:
            await worker.registered()
        await server.wait_for(lambda: len(server.workers) >= known + count, 90)
    except BaseException:
        for worker in workers:
            worker.stop()
        raise
    return workers


def holder_of(room: KitRoom, workers: list[KitWorkerProcess]) -> KitWorkerProcess:
    """The worker whose job process is the room's latest agent."""
    pid = list(room.agent_pids.values())[-1]
    return next(worker for worker in workers if worker.owns(pid))
