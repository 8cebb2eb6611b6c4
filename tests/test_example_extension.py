"""examples/wordcount, the tiny extension of docs/extending.md, on both backends: its table
and queries come with it, its row is stored with its task (all or nothing) and its count
with the task's completion, its config section is checked at install, and its routes are
served with the others."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from vpsweb_tasks import QueueFullError, TaskManager, TaskStatus
from vpsweb_tasks.config import Settings
from vpsweb_tasks.errors import ConfigError
from vpsweb_tasks_http import create_app

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def wordcount() -> Iterator[Any]:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import wordcount

        yield wordcount
    finally:
        sys.path.remove(str(EXAMPLES))


async def test_a_count_is_stored_with_its_task_and_its_completion(
    wordcount: Any, settings_factory: Callable[..., Settings], storage: dict[str, Any]
) -> None:
    settings = settings_factory(storage=storage, background_tasks={"max_queue_size": 2})
    extension = wordcount.WordCount()
    async with TaskManager(settings, extensions=[extension]) as manager:
        assert "wordcount" in manager.task_types
        await manager.pause()
        first = await extension.submit("the quick brown fox")
        assert await extension.words(first) is None  # stored, not yet counted
        await extension.submit("two words")
        # The queue is full: neither the task nor its row is stored.
        with pytest.raises(QueueFullError):
            await extension.submit("no room")
        assert sum((await manager.store.count_tasks()).values()) == 2
        await manager.resume()
        record = await manager.wait(first, timeout=10)
        assert record.status is TaskStatus.COMPLETED
        assert record.result == {"words": 4}
        assert await extension.words(first) == 4
        with pytest.raises(LookupError):
            await extension.words("nope")


async def test_its_config_section_is_checked_when_it_is_installed(
    wordcount: Any, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory(wordcount={"max_words": 0})
    with pytest.raises(ConfigError, match=r"wordcount\.max_words"):
        TaskManager(settings, extensions=[wordcount.WordCount()])
    extension = wordcount.WordCount()
    settings = settings_factory(wordcount={"max_words": 2})
    async with TaskManager(settings, extensions=[extension]):
        with pytest.raises(ValueError, match="more than 2 words"):
            await extension.submit("one two three")


async def test_its_routes_are_served_with_the_others(
    wordcount: Any, settings_factory: Callable[..., Settings]
) -> None:
    manager = TaskManager(settings_factory(), extensions=[wordcount.WordCount()])
    app = create_app(manager=manager)
    assert "/api/v1/wordcount/{task_id}" in app.openapi()["paths"]
    transport = httpx.ASGITransport(app=app)
    async with (
        manager,
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        accepted = await client.post("/api/v1/wordcount", json={"text": "a b c"})
        assert accepted.status_code == 202, accepted.text
        task_id = accepted.json()["task_id"]
        await manager.wait(task_id, timeout=10)
        counted = await client.get(f"/api/v1/wordcount/{task_id}")
        assert counted.json() == {"task_id": task_id, "words": 3}
        assert (await client.get("/api/v1/wordcount/nope")).status_code == 404
        invalid = await client.post("/api/v1/wordcount", json={"text": ""})
        assert invalid.status_code == 422
