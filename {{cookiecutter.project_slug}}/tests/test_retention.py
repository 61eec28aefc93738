"""Retention that grows with engagement (SESSION_RETENTION_TIERS): the tiers, checked once in
the settings, applied by every store on its own clock when a participant leaves and when their
record is written while they are away. The memory and SQLite stores run on a ManualClock;
Redis keeps its own, so there the record's TTL is read back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import store_fixtures
from store_fixtures import ManualClock, build_store
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.backends import open_session_store
from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.resilience.store import StorageLimits
from {{ cookiecutter.package_name }}.resilience.store.redis import participant_keys
from {{ cookiecutter.package_name }}.resilience.store.retention import RetentionTiers
from {{ cookiecutter.package_name }}.settings import SettingsError, load_settings
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer

redis_server = store_fixtures.redis_server

ROOM = "room-t"
HOUR, DAY = 3600.0, 86400.0
# score 2 (two returns, or 20 turns): an hour; score 5: a day; below: the 60 s retention
TIERS = "2:1h,5:1d"


def turns(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": f"item_{i}", "role": "user", "content": [f"turn {i}"]} for i in range(start, n)]


def lines(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": f"seg_{i}", "speaker": "al", "text": f"w{i}"} for i in range(start, n)]


def tiered_store(
    kind: str, server: RedisServer | None, clock: ManualClock | None, **kw: Any
) -> Any:
    policy = RetentionTiers.parse(TIERS, base=60.0)
    if kind != "sqlite":
        kw.pop("directory", None)
    return build_store(kind, server, clock, retention=60.0, retention_policy=policy, **kw)


async def call(store: Any, who: str, *, returns: int = 0, items: int = 0, segs: int = 0) -> None:
    """A participant who joined ``returns + 1`` times, stored ``items`` and ``segs``, and left."""
    for n in range(returns + 1):
        await store.join(ROOM, who, f"s{n}")
        if n == 0:
            await store.append(ROOM, who, items=turns(items), transcript=lines(segs))
        await store.leave(ROOM, who, f"s{n}")


# -- the rule ---------------------------------------------------------------------------------


def test_a_record_is_kept_as_long_as_the_highest_tier_its_score_reaches() -> None:
    tiers = RetentionTiers.parse("0:1d,3:7d, 20:30d", base=300)
    assert [tiers.seconds_for(s) for s in (0, 2, 3, 19, 20, 500)] == [
        DAY, DAY, 7 * DAY, 7 * DAY, 30 * DAY, 30 * DAY,
    ]  # fmt: skip
    above = RetentionTiers.parse("3:90m", base=300)
    assert [above.seconds_for(s) for s in (0, 2, 3)] == [300, 300, 5400]
    assert str(tiers) == "0:1d,3:7d,20:30d"


def test_without_tiers_every_record_keeps_session_retention_s() -> None:
    settings = load_settings(session_retention_s=420)
    tiers = settings.retention_tiers()
    assert tiers.tiers == () and {tiers.seconds_for(s) for s in (0, 7, 10**6)} == {420}
    assert load_settings(session_retention_tiers="  ").session_retention_tiers is None


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("3-7d", "'3-7d' is not score:duration; write tiers like 0:1d,3:7d,20:30d"),
        ("x:1d", "score 'x' in 'x:1d' must be a whole number >= 0"),
        ("3:7w", "'7w' is not a duration: write seconds or a number with s, m, h or d"),
        ("3:0", "'0' must be more than 0 and at most 3650d"),
        ("3:1d,", "'' is not score:duration"),
        ("20:30d,3:7d", "scores must increase from one tier to the next: 3:7d after 20:30d"),
        ("0:7d,3:1d", "retention must grow with the score: 3:1d is not longer than 0:7d"),
        ("0:1m", "0:1m keeps records less than SESSION_RETENTION_S (5m); tiers only lengthen"),
    ],
)
def test_bad_tiers_are_one_line_naming_the_variable(value: str, says: str) -> None:
    with pytest.raises(SettingsError) as exc:
        load_settings(session_retention_tiers=value)
    (problem,) = exc.value.problems
    assert problem.startswith(f"SESSION_RETENTION_TIERS is invalid: {says}"), problem
    assert "\n" not in problem


def test_the_cli_says_what_is_wrong_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSION_RETENTION_TIERS", "3:7d,2:30d")
    result = CliRunner().invoke(app, ["sessions", "list"])
    assert result.exit_code == 2
    said = [line for line in result.output.splitlines() if "SESSION_RETENTION_TIERS" in line]
    assert len(said) == 1 and "scores must increase" in said[0]
    assert "Traceback" not in result.output


# -- memory and SQLite, on a clock the test moves ---------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_tiers_on_the_store_clock(kind: str, tmp_path: Path) -> None:
    clock = ManualClock()
    store = tiered_store(kind, None, clock, directory=tmp_path)
    await call(store, "brief", items=3)  # score 0: 60 s
    await call(store, "back", returns=2, items=1)  # score 2: an hour
    await call(store, "talker", items=30, segs=12)  # score 3: an hour
    await call(store, "regular", returns=3, items=25)  # score 5: a day
    await call(store, "listener", segs=50)  # a meeting's listen-only participant: 5

    async def kept() -> set[str]:
        who = ("brief", "back", "talker", "regular", "listener")
        return {w for w in who if await store.load(ROOM, w) is not None}

    clock.advance(59)
    assert await kept() == {"brief", "back", "talker", "regular", "listener"}
    clock.advance(2)
    assert await kept() == {"back", "talker", "regular", "listener"}
    clock.advance(HOUR - 2 - 61)
    assert await kept() == {"back", "talker", "regular", "listener"}
    clock.advance(4)
    assert await kept() == {"regular", "listener"}
    clock.advance(DAY - HOUR - 4)
    assert await kept() == {"regular", "listener"}
    clock.advance(4)
    assert await kept() == set()
    await store.aclose()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_write_while_away_keeps_what_the_score_earns_now(kind: str, tmp_path: Path) -> None:
    clock = ManualClock()
    store = tiered_store(kind, None, clock, directory=tmp_path)
    await call(store, "al", items=19)  # score 1: 60 s
    clock.advance(30)
    # a late transcript line lifts the score to 2: an hour from the write
    await store.append(ROOM, "al", transcript=lines(20))
    clock.advance(HOUR - 1)
    assert await store.load(ROOM, "al") is not None
    # each write while away keeps the record the hour its score earns, from that write
    await store.update_profile(ROOM, "al", language="fr")
    clock.advance(HOUR - 1)
    assert await store.load(ROOM, "al") is not None
    clock.advance(2)
    assert await store.load(ROOM, "al") is None
    await store.aclose()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_turns_the_storage_limits_dropped_still_count(kind: str, tmp_path: Path) -> None:
    clock = ManualClock()
    limits = StorageLimits(max_entries=5)
    store = tiered_store(kind, None, clock, directory=tmp_path, limits=limits)
    await call(store, "long", items=50)  # 5 held, 45 dropped: score 5, a day
    clock.advance(DAY - 1)
    record = await store.load(ROOM, "long")
    assert record is not None and len(record.items) == 5 and record.items_trimmed == 45
    await store.aclose()


# -- Redis: its own clock, so the TTL it holds is read back ------------------------------------


def ttls(server: RedisServer, prefix: str, who: str) -> list[int]:
    """The PTTL of the participant's record, items, transcript and seen-ids keys."""
    keys = participant_keys(prefix, ROOM, who)
    with server.client() as admin:
        return [admin.pttl(k) for k in (keys.record, keys.items, keys.transcript, keys.ids)]


def about(ms: list[int], seconds: float) -> bool:
    return all(seconds * 1000 - 5_000 < t <= seconds * 1000 for t in ms)


async def test_redis_keeps_the_tier_as_the_records_ttl(redis_server: RedisServer) -> None:
    store = tiered_store("redis", redis_server, None)
    await call(store, "brief", items=3, segs=1)
    await call(store, "back", returns=2, items=1, segs=1)
    await call(store, "regular", returns=3, items=25, segs=1)
    await call(store, "listener", items=1, segs=50)
    assert about(ttls(redis_server, store.prefix, "brief"), 60)
    assert about(ttls(redis_server, store.prefix, "back"), HOUR)
    assert about(ttls(redis_server, store.prefix, "regular"), DAY)
    assert about(ttls(redis_server, store.prefix, "listener"), DAY)
    await store.aclose()


async def test_redis_write_while_away_lengthens_never_shortens(redis_server: RedisServer) -> None:
    store = tiered_store("redis", redis_server, None)
    await call(store, "al", items=19, segs=1)
    assert about(ttls(redis_server, store.prefix, "al"), 60)
    await store.append(ROOM, "al", transcript=lines(20, start=1))  # score 2 now
    assert about(ttls(redis_server, store.prefix, "al"), HOUR)
    await store.update_profile(ROOM, "al", language="fr")
    await store.set_gemini_handle(ROOM, "al", "h1", ["item_0"])
    assert about(ttls(redis_server, store.prefix, "al"), HOUR)
    # back while the record lives: active again (an hour past each write), then a new tier
    await store.join(ROOM, "al", "s9")
    await store.append(ROOM, "al", items=turns(50, start=19))  # 50 turns, 1 return: 6
    await store.leave(ROOM, "al", "s9")
    assert about(ttls(redis_server, store.prefix, "al"), DAY)
    await store.aclose()


async def test_default_settings_keep_todays_ttls(redis_server: RedisServer) -> None:
    settings = load_settings(redis_url=redis_server.url, redis_prefix="dflt")
    store = open_session_store(settings)
    await call(store, "regular", returns=5, items=200, segs=200)
    assert about(ttls(redis_server, "dflt", "regular"), 300)
    await store.aclose()


async def test_settings_tiers_reach_the_store(redis_server: RedisServer) -> None:
    settings = load_settings(
        redis_url=redis_server.url, redis_prefix="tiers", session_retention_tiers="3:7d"
    )
    store = open_session_store(settings)
    await call(store, "brief", returns=2, items=9, segs=1)
    await call(store, "regular", returns=3, items=1, segs=1)
    assert about(ttls(redis_server, "tiers", "brief"), 300)
    assert about(ttls(redis_server, "tiers", "regular"), 7 * DAY)
    await store.aclose()


def test_sessions_list_shows_score_and_retention(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("REDIS_PREFIX", "shown")
    monkeypatch.setenv("SESSION_RETENTION_TIERS", "3:7d")

    async def write() -> None:
        store = open_session_store(load_settings())
        await call(store, "regular", returns=1, items=24, segs=1)
        await store.aclose()

    asyncio.run(write())
    listed = CliRunner().invoke(app, ["sessions", "list"], env={"COLUMNS": "250"})
    assert listed.exit_code == 0, listed.output
    assert "3, kept 7d" in listed.stdout
