"""assistant.py, the file you edit: its greeting, its instructions and its tools.

The pattern to copy for your own agent: a real ``AgentSession`` runs ``Assistant`` with a
scripted model (``ScriptedLLM`` answers with the replies you give it, in order, and keeps every
request it got in ``requests``); ``session.run(user_input=...)`` plays one user turn, and
livekit-agents' ``result.expect`` walks what the agent did, event by event. Tools run for real.
"""

from __future__ import annotations

import re

from livekit.agents import AgentSession, RunResult, llm

from {{ cookiecutter.package_name }}.assistant import (
    GREETING,
    INSTRUCTIONS,
    WELCOME_BACK,
    Assistant,
)
from {{ cookiecutter.package_name }}.testing import ScriptedLLM, ToolCall


async def test_the_agent_speaks_first_with_the_greeting() -> None:
    model = ScriptedLLM(["Hello! How can I help?"])
    async with AgentSession(llm=model) as session:
        await session.start(Assistant())
        greeting = session.generate_reply(instructions=GREETING)  # what the worker does
        await greeting

    said = [item.text_content for item in greeting.chat_items if item.type == "message"]
    assert said == ["Hello! How can I help?"]
    assert ("system", GREETING) in model.requests[0].messages


async def test_a_turn_is_answered_under_the_instructions() -> None:
    model = ScriptedLLM(["Paris."])
    async with AgentSession(llm=model) as session:
        await session.start(Assistant())
        result: RunResult = await session.run(user_input="What is the capital of France?")

    reply = result.expect.next_event().is_message(role="assistant").event().item
    result.expect.no_more_events()
    assert reply.text_content == "Paris."
    seen = model.requests[0].messages
    assert seen[0] == ("system", INSTRUCTIONS)
    assert seen[-1] == ("user", "What is the capital of France?")


async def test_the_time_tool_answers_and_its_output_reaches_the_model() -> None:
    call = ToolCall("current_time", {"timezone": "Europe/Paris"}, then="It is noon in Paris.")
    model = ScriptedLLM([call])
    async with AgentSession(llm=model) as session:
        await session.start(Assistant())
        result: RunResult = await session.run(user_input="What time is it in Paris?")

    result.expect.next_event().is_function_call(
        name="current_time", arguments={"timezone": "Europe/Paris"}
    )
    output = result.expect.next_event().is_function_call_output(is_error=False).event().item
    assert re.fullmatch(r"\w+ \d\d \w+ \d{4}, \d\d:\d\d \(Europe/Paris\)", output.output)
    result.expect.next_event().is_message(role="assistant")
    result.expect.no_more_events()
    # the model was asked again with the tool's answer last
    assert model.requests[-1].items[-1].text == output.output


async def test_an_unknown_timezone_asks_the_model_to_ask_the_user() -> None:
    model = ScriptedLLM([ToolCall("current_time", {"timezone": "Mars/Olympus"}, then="Where?")])
    async with AgentSession(llm=model) as session:
        await session.start(Assistant())
        result: RunResult = await session.run(user_input="What time is it on Mars?")

    result.expect.next_event().is_function_call(name="current_time")
    result.expect.next_event().is_function_call_output(
        output="Unknown timezone 'Mars/Olympus'; ask the user for a city or region.",
        is_error=False,
    )
    result.expect.next_event().is_message(role="assistant")
    result.expect.no_more_events()


async def test_welcome_back_continues_the_earlier_conversation() -> None:
    earlier = llm.ChatContext.empty()
    earlier.add_message(role="user", content="Book a table for two.")
    earlier.add_message(role="assistant", content="For which evening?")
    model = ScriptedLLM(["Welcome back! Which evening would you like?"])
    async with AgentSession(llm=model) as session:
        await session.start(Assistant(chat_ctx=earlier))  # what the worker does on a return
        await session.generate_reply(instructions=WELCOME_BACK)

    seen = model.requests[0].messages
    assert ("user", "Book a table for two.") in seen
    assert ("assistant", "For which evening?") in seen
    assert seen[-1] == ("system", WELCOME_BACK)
