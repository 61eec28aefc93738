"""RPC between the agent and scripted participants.

A mixin of :class:`SimulatedRoom`. Calls *to* the agent run the SDK's own incoming chain
(interceptors, response deadline; see :func:`._sdk.run_incoming_rpc`), tracked with the SDK's
own invocations so ``disconnect()`` cancels them as the SDK does; only answering through the
FFI is left out. Calls *from* the agent (``perform_rpc``) run the SDK's outgoing interceptor
chain and reach handlers scripted with :meth:`set_participant_rpc_handler`. Both directions
raise ``rtc.RpcError`` with the SDK's built-in codes and are recorded in ``rpc_calls``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from livekit import rtc

from . import _sdk
from .records import RoomRecorder, RpcCallRecord
from .sfu import require_participant

logger = logging.getLogger(__name__)

# the SFU's limit on RPC payloads, enforced by the SDK's native side
MAX_RPC_PAYLOAD_BYTES = 15_360

RemoteRpcHandler = Callable[[rtc.RpcInvocationData], Awaitable[str] | str]
"""A scripted participant's RPC handler: gets the invocation, returns the payload."""

# the SDK's default response timeout for perform_rpc
_RPC_DEFAULT_TIMEOUT = 15.0


class RpcMixin(rtc.Room):
    """``perform_rpc_as`` / ``set_participant_rpc_handler`` for :class:`SimulatedRoom`."""

    recorder: RoomRecorder
    _participant_rpc: dict[tuple[str, str], RemoteRpcHandler]

    async def perform_rpc_as(
        self,
        identity: str,
        method: str,
        payload: str = "",
        *,
        response_timeout: float = _RPC_DEFAULT_TIMEOUT,
    ) -> str:
        """The participant calls the agent's RPC ``method``; returns the response payload.

        Runs the SDK's incoming chain (interceptors, deadline), so errors are the SDK's:
        ``rtc.RpcError`` with ``UNSUPPORTED_METHOD`` for an unknown method,
        ``APPLICATION_ERROR`` for a handler that raised, ``RESPONSE_TIMEOUT`` past the deadline.
        """
        require_participant(self, identity)
        record = RpcCallRecord(
            caller_identity=identity,
            destination_identity=self.local_participant.identity,
            method=method,
            payload=payload,
            at=time.time(),
        )
        self.recorder.rpc_calls.append(record)
        self.recorder.emit("rpc_call_started", record)
        try:
            response = await self._invoke_agent_rpc(identity, method, payload, response_timeout)
        except rtc.RpcError as e:
            record.error_code, record.error_message = e.code, e.message
            raise
        finally:
            record.finished_at = time.time()
            self.recorder.emit("rpc_call_finished", record)
        record.response = response
        return response

    async def _invoke_agent_rpc(
        self, identity: str, method: str, payload: str, response_timeout: float
    ) -> str:
        Code = rtc.RpcError.ErrorCode
        if not self.isconnected():
            raise _sdk.rpc_error(Code.RECIPIENT_NOT_FOUND)
        if len(payload.encode()) > MAX_RPC_PAYLOAD_BYTES:
            raise _sdk.rpc_error(Code.REQUEST_PAYLOAD_TOO_LARGE)
        invocation = rtc.RpcInvocationData(
            request_id=str(uuid.uuid4()),
            caller_identity=identity,
            payload=payload,
            response_timeout=response_timeout,
            method=method,
        )

        async def run_chain() -> str:
            # the SDK's _handle_rpc_method_invocation, minus sending the answer through the FFI
            try:
                result = await _sdk.run_incoming_rpc(self.local_participant, invocation)
            except rtc.RpcError:
                raise
            except Exception:
                logger.exception("RPC handler raised", extra={"method": method})
                raise _sdk.rpc_error(Code.APPLICATION_ERROR) from None
            response = result or ""
            if len(response.encode()) > MAX_RPC_PAYLOAD_BYTES:
                raise _sdk.rpc_error(Code.RESPONSE_PAYLOAD_TOO_LARGE)
            return response

        # tracked like the SDK's invocations, so disconnect() cancels it (RECIPIENT_DISCONNECTED)
        task = asyncio.get_running_loop().create_task(run_chain())
        _sdk.track_rpc_invocation(self, task)
        return await task

    def set_participant_rpc_handler(
        self, identity: str, method: str, handler: RemoteRpcHandler | None
    ) -> None:
        """Answer the agent's ``perform_rpc(destination_identity=identity, method=...)``.

        ``handler`` gets an ``rtc.RpcInvocationData`` and returns the payload (sync or async);
        ``None`` removes it. Unanswered methods raise ``UNSUPPORTED_METHOD`` for the agent.
        """
        require_participant(self, identity)
        if handler is None:
            self._participant_rpc.pop((identity, method), None)
        else:
            self._participant_rpc[(identity, method)] = handler

    async def _deliver_agent_rpc(self, call: rtc.RpcCallInfo) -> str:
        Code = rtc.RpcError.ErrorCode
        record = RpcCallRecord(
            caller_identity=self.local_participant.identity,
            destination_identity=call.destination_identity,
            method=call.method,
            payload=call.payload,
            at=time.time(),
        )
        self.recorder.rpc_calls.append(record)
        self.recorder.emit("rpc_call_started", record)
        try:
            if not self.isconnected():
                raise _sdk.rpc_error(Code.SEND_FAILED)
            if call.destination_identity not in self.remote_participants:
                raise _sdk.rpc_error(Code.RECIPIENT_NOT_FOUND)
            if len(call.payload.encode()) > MAX_RPC_PAYLOAD_BYTES:
                raise _sdk.rpc_error(Code.REQUEST_PAYLOAD_TOO_LARGE)
            handler = self._participant_rpc.get((call.destination_identity, call.method))
            if handler is None:
                raise _sdk.rpc_error(Code.UNSUPPORTED_METHOD)
            timeout = call.response_timeout or _RPC_DEFAULT_TIMEOUT
            invocation = rtc.RpcInvocationData(
                request_id=str(uuid.uuid4()),
                caller_identity=self.local_participant.identity,
                payload=call.payload,
                response_timeout=timeout,
                method=call.method,
            )
            try:
                reply = handler(invocation)
                if inspect.isawaitable(reply):
                    result = await asyncio.wait_for(reply, timeout)
                else:
                    result = reply
            except TimeoutError:
                raise _sdk.rpc_error(Code.RESPONSE_TIMEOUT) from None
            except rtc.RpcError:
                raise
            except Exception:
                logger.exception("scripted RPC handler raised", extra={"method": call.method})
                raise _sdk.rpc_error(Code.APPLICATION_ERROR) from None
            record.response = result or ""
            return record.response
        except rtc.RpcError as e:
            record.error_code, record.error_message = e.code, e.message
            raise
        finally:
            record.finished_at = time.time()
            self.recorder.emit("rpc_call_finished", record)
