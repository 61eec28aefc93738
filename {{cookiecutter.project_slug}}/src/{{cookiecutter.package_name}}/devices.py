"""One person, several devices: a user key makes a laptop and a phone one conversation.

LiveKit tells participants apart by identity, and a frontend that mints a new identity on
every connect (the stock React starter does) leaves "the same person" with no name at all.
The backend that mints join tokens can give the person a stable key instead: the participant
attribute ``user_key`` (``token --user-key``). Tokens grant no ``canUpdateOwnMetadata``, so a
participant cannot change it. With a user key, the conversation is the person's:

- the store keeps one record per room and key, whichever device the person used;
- a second device joining takes the conversation over: the agent listens to it from then on,
  in this session and every later one, and welcomes the person back once;
- the agent's voice and transcript go to the whole room, so the first device keeps receiving
  them; ``transcript.history`` and ``session.restart`` answer every device of the person;
- when the device in use leaves and another stays, the conversation goes back to that one;
  it ends only when the last device stays away longer than the retention period.

Without a user key the key is the identity, and nothing changes: a device is a connection of
that identity, as a page refresh always was. A user key equal to an identity names the same
conversation. A malformed user key is ignored with one warning line per join, and the
identity used; an empty one is no key.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .log import get_logger, identity_ref

if TYPE_CHECKING:
    from livekit import rtc

    from .resilience.rpc import RpcRoutes
    from .resilience.supervisor import SessionSupervisor

__all__ = [
    "MAX_USER_KEY_LENGTH",
    "USER_KEY_ATTRIBUTE",
    "USER_KEY_CHARACTERS",
    "DeviceFollower",
    "conversation_key",
    "user_key_problem",
]

logger = get_logger(__name__)

USER_KEY_ATTRIBUTE = "user_key"
MAX_USER_KEY_LENGTH = 128
USER_KEY_CHARACTERS = "letters, digits and . _ - : @ | + = /"
_USER_KEY = re.compile(r"[A-Za-z0-9._:@|+=/-]+")


def user_key_problem(value: str) -> str | None:
    """What makes ``value`` unusable as a user key, or None when it is a good one."""
    if not value:
        return "is empty"
    if len(value) > MAX_USER_KEY_LENGTH:
        return f"is longer than {MAX_USER_KEY_LENGTH} characters"
    if not _USER_KEY.fullmatch(value):
        return "holds other characters"
    return None


def conversation_key(participant: rtc.Participant) -> str:
    """The key of ``participant``'s conversation: their user key, else their identity."""
    value = participant.attributes.get(USER_KEY_ATTRIBUTE, "")
    if not value:
        return participant.identity
    problem = user_key_problem(value)
    if problem is None:
        return value
    # the value is not logged: a user key may be personal data
    logger.warning(
        "user_key attribute ignored; the conversation is keyed by the participant's identity",
        participant=identity_ref(participant.identity),
        problem=f"the user key {problem}; use 1 to {MAX_USER_KEY_LENGTH} {USER_KEY_CHARACTERS}",
    )
    return participant.identity


class DeviceFollower:
    """Which of the person's devices their conversation listens to.

    ``owner`` is the identity the conversation started with: RPC calls are routed by it.
    :meth:`switch` moves the supervisor (this session and every later one) to another
    device.
    """

    def __init__(self, owner: str, routes: RpcRoutes) -> None:
        self.owner = owner
        self.current = owner
        self._routes = routes

    def switch(self, identity: str, supervisor: SessionSupervisor | None) -> bool:
        """Listen to ``identity`` from now on, in this session and every later one, and
        transcribe its speech as the person's; False when it already was the one."""
        if identity == self.current:
            return False
        logger.info(
            "conversation moved to another device of the participant",
            device=identity_ref(identity),
        )
        self.current = identity
        # every device of the person reaches the conversation's RPC methods
        self._routes.add_device(identity, of=self.owner)
        if supervisor is not None:
            supervisor.set_participant(identity)
        return True
