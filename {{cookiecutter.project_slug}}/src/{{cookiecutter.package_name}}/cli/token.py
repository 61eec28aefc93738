"""`token`: a join token minted server-side, so the participant identity is whatever we sign."""

from __future__ import annotations

import datetime
import math
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlencode

import typer

from ..devices import (
    MAX_USER_KEY_LENGTH,
    USER_KEY_ATTRIBUTE,
    USER_KEY_CHARACTERS,
    user_key_problem,
)
from ._checks import SHORT_SECRET_NOTE, short_secret
from ._common import fail, settings_or_exit

if TYPE_CHECKING:
    from ..settings import Settings

MAX_IDENTITY_LENGTH = 256


def token(
    identity: Annotated[str, typer.Option(help="The participant identity the token grants.")],
    room: Annotated[str, typer.Option(help="The room to join.")],
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    ttl_minutes: Annotated[int, typer.Option(min=1, max=24 * 60, help="Validity.")] = 60,
    user_key: Annotated[
        str,
        typer.Option(
            help="A stable key for the person (your user id): their devices, whatever their "
            "identity, continue one conversation."
        ),
    ] = "",
) -> None:
    """Mint a join token (identity set server-side) and print a link to try the agent."""
    settings = settings_or_exit(livekit=True)
    try:
        jwt = mint_join_token(
            settings,
            identity=identity,
            room=room,
            name=name,
            ttl_minutes=ttl_minutes,
            user_key=user_key,
        )
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    typer.echo(jwt)
    for label, link in try_links(settings, jwt):
        typer.echo(f"{label}: {link}", err=True)
    if short_secret(settings):
        typer.secho(f"note: {SHORT_SECRET_NOTE}", fg="yellow", err=True)


def mint_join_token(
    settings: Settings,
    *,
    identity: str,
    room: str,
    name: str = "",
    ttl_minutes: int = 60,
    user_key: str = "",
) -> str:
    """A JWT that lets ``identity`` join ``room`` and dispatches this agent when it has a name.

    The room it creates outlives its last participant by ``SESSION_RETENTION_S``
    (``departure_timeout``; LiveKit's default is 20 s), so a participant who drops off comes
    back to the same job and agent. The configuration applies when this join creates the room.
    ``user_key`` goes in the participant attribute ``user_key``, which the participant cannot
    change (the token grants no ``canUpdateOwnMetadata``): see ``devices``.
    """
    from livekit import api

    if not identity.strip() or len(identity) > MAX_IDENTITY_LENGTH:
        raise ValueError(f"--identity must be 1 to {MAX_IDENTITY_LENGTH} characters, not blank")
    if not room.strip():
        raise ValueError("--room must not be blank")
    if user_key and (problem := user_key_problem(user_key)) is not None:
        raise ValueError(
            f"--user-key must be 1 to {MAX_USER_KEY_LENGTH} {USER_KEY_CHARACTERS}"
            f" (this one {problem})"
        )
    assert settings.livekit_api_key and settings.livekit_api_secret  # checked by require()
    token = (
        api.AccessToken(settings.livekit_api_key, settings.livekit_api_secret.get_secret_value())
        .with_identity(identity)
        .with_name(name or identity)
        .with_ttl(datetime.timedelta(minutes=ttl_minutes))
        .with_grants(api.VideoGrants(room_join=True, room=room))
    )
    if user_key:
        token = token.with_attributes({USER_KEY_ATTRIBUTE: user_key})
    config = api.RoomConfiguration(departure_timeout=math.ceil(settings.session_retention_s))
    if settings.agent_name:
        config.agents.append(api.RoomAgentDispatch(agent_name=settings.agent_name))
    return token.with_room_config(config).to_jwt()


def try_links(settings: Settings, jwt: str) -> list[tuple[str, str]]:
    """Where to use the token: LiveKit Meet joins at once; the Agents Playground takes it
    under "Manual" with the server URL."""
    assert settings.livekit_url
    meet = "https://meet.livekit.io/custom?" + urlencode(
        {"liveKitUrl": settings.livekit_url, "token": jwt}
    )
    return [
        ("Join now (LiveKit Meet)", meet),
        ("Agents Playground (Manual: paste URL and token)", "https://agents-playground.livekit.io"),
        ("Server URL", settings.livekit_url),
    ]
