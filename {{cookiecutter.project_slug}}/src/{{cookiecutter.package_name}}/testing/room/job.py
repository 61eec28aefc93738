"""A job context for running the real job entrypoint in-process, with its shutdown observed.

livekit's ``fake_job_context`` ignores ``ctx.shutdown(reason)``; on a real worker that call ends
the job, and the call with it. :class:`SimulatedJob` records every such call, so a test can say
whether (and why) a call was ended::

    with SimulatedJob(room) as job:
        conversation = await run_job(job.ctx, settings=settings, models=models)
    ...
    assert job.shutdown_reasons == []
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from livekit import rtc
from livekit.agents import JobContext
from livekit.agents.testing import fake_job_context

from . import _sdk

__all__ = ["SimulatedJob"]


class SimulatedJob:
    """``fake_job_context`` plus what a worker does with ``ctx.shutdown``: it is recorded."""

    def __init__(
        self, room: rtc.Room, *, job_id: str = "sim-job", agent_identity: str = "agent"
    ) -> None:
        self.shutdown_reasons: list[str] = []
        self.ended = asyncio.Event()
        self._context = fake_job_context(room=room, job_id=job_id, agent_identity=agent_identity)
        self._ctx: JobContext | None = None

    @property
    def ctx(self) -> JobContext:
        """The job context (inside the ``with`` block)."""
        if self._ctx is None:
            raise RuntimeError("use SimulatedJob in a with block")
        return self._ctx

    def __enter__(self) -> SimulatedJob:
        ctx = self._context.__enter__()
        _sdk.intercept_shutdown(ctx, self._shutdown)
        self._ctx = ctx
        return self

    def __exit__(self, *exc: Any) -> None:
        with contextlib.suppress(ValueError):  # the context var was set in another context
            self._context.__exit__(*exc)

    def _shutdown(self, reason: str = "user requested") -> None:
        self.shutdown_reasons.append(reason)
        self.ended.set()
