"""Helpers shared by the Gemini tests (server, plugin, resume handler)."""

from __future__ import annotations

from livekit.agents import AgentSession, RunResult

from {{ cookiecutter.package_name }}.testing.gemini.server import LocalGeminiLiveServer


async def ask(session: AgentSession, text: str) -> str:
    """Run one user turn and return what the agent said."""
    result: RunResult = await session.run(user_input=text)
    return " ".join(e.item.text_content or "" for e in result.events if e.type == "message")


async def connected(srv: LocalGeminiLiveServer, count: int) -> None:
    """Wait until the server's connection number ``count`` is past setupComplete."""
    await srv.wait_for(
        lambda: (
            len(srv.connections) >= count
            and srv.connections[count - 1].setup_complete_after is not None
        ),
        what=f"connection {count}",
    )
