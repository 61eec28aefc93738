"""One participant cannot fill a shared store: big entries are cut, long histories trimmed."""

from __future__ import annotations

from {{ cookiecutter.package_name }}.models import ModelStack
from {{ cookiecutter.package_name }}.resilience.returning import chat_ctx_from_record
from {{ cookiecutter.package_name }}.resilience.store import (
    MemoryStore,
    RedisStore,
    StorageLimits,
    open_store,
)
from {{ cookiecutter.package_name }}.resilience.store.base import TRIMMED_MARK
from {{ cookiecutter.package_name }}.settings import load_settings
from {{ cookiecutter.package_name }}.testing import (
    RedisServer,
    ScriptedLLM,
    ScriptedTTS,
    SimulatedJob,
    SimulatedRoom,
)
from {{ cookiecutter.package_name }}.worker import run_job

ROOM, USER = "limits-room", "typist"
MESSAGES = 20
MB = 1024 * 1024


def message(n: int) -> dict:
    return {"id": f"m{n}", "type": "message", "role": "user", "content": [f"turn {n}"]}


async def test_the_model_is_told_where_the_history_was_trimmed() -> None:
    store = MemoryStore(limits=StorageLimits(max_entries=3))
    await store.append(ROOM, USER, items=[message(n) for n in range(5)])
    record = await store.load(ROOM, USER)
    assert record is not None
    ctx = chat_ctx_from_record(record)
    assert ctx.messages() == ctx.items  # nothing but messages
    first, *rest = ctx.messages()
    assert first.role == "system" and "2 oldest items" in (first.text_content or "")
    assert [item.text_content for item in rest] == ["turn 2", "turn 3", "turn 4"]


async def test_a_participant_typing_megabytes_does_not_fill_redis() -> None:
    """The issue's measurement: 20 chat messages of 1 MB grew Redis by 40 MB."""
    with RedisServer() as server:
        settings = load_settings(redis_url=server.url)
        room = SimulatedRoom(name=ROOM, agent_identity="agent")
        room.add_participant(USER)
        llm = ScriptedLLM(["Hello!"] + [f"answer {n}" for n in range(MESSAGES)])
        stack = ModelStack(name="scripted", llm=llm, tts=ScriptedTTS(), turn_detection="manual")
        with server.client() as admin:
            before = admin.info("memory")["used_memory"]
        with SimulatedJob(room) as job:
            conversation = await run_job(job.ctx, settings=settings, models=lambda: stack)
        assert conversation is not None
        try:
            for n in range(MESSAGES):
                await room.send_chat(USER, f"{n} " + "x" * MB)

                def answered(r: SimulatedRoom, n: int = n) -> bool:
                    return f"answer {n}" in _agent_lines(r)

                await room.wait_until(answered)
            await conversation.recorder.flush()
            assert isinstance(conversation.store, RedisStore)
            await conversation.store.wait_flushed(10)
            assert job.shutdown_reasons == []  # the call was never ended
        finally:
            await conversation.aclose()
        with server.client() as admin:
            grown = admin.info("memory")["used_memory"] - before
        check = open_store(redis_url=server.url)
        try:
            record = await check.load(ROOM, USER)
        finally:
            await check.aclose()
    # every turn is kept, each big message cut to the entry limit and marked
    assert record is not None
    user_texts = [i["content"][0] for i in record.items if i["role"] == "user"]
    assert len(user_texts) == MESSAGES
    assert all(text.endswith(TRIMMED_MARK) for text in user_texts)
    assert all(len(text) < settings.session_max_entry_bytes for text in user_texts)
    assert grown < 8 * MB, f"redis grew by {grown / MB:.1f} MB"


def _agent_lines(room: SimulatedRoom) -> list[str]:
    return [s.text for s in room.transcript() if s.role == "agent" and s.final]
