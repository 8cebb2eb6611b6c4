"""A tiny extension: counts the words of a text in the background.

It uses every part of the extension hook (docs/extending.md): a table of its own with
migrations and named queries for both backends, a row written in the same transaction as
its task's insert and another in the same transaction as its completion, a config
section, a task type and HTTP routes. Run it with the server, from this folder::

    vpsweb-tasks serve --extension wordcount:WordCount
    curl -X POST localhost:8000/api/v1/wordcount -H 'content-type: application/json' \\
        -d '{"text": "the quick brown fox"}'
    curl localhost:8000/api/v1/wordcount/<task_id>
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from vpsweb_tasks import Extension, TaskContext, TaskDefinition, TaskManager
from vpsweb_tasks.storage.ops import Mode, Op, Step, count, operation, row
from vpsweb_tasks.storage.queries import Component
from vpsweb_tasks.storage.types import NewTask

__all__ = ["WordCount", "WordCountSettings"]


class WordCountSettings(BaseModel):
    """The ``wordcount`` config section."""

    max_words: int = Field(default=10_000, ge=1)
    """Longest text accepted, in words."""


@operation(Mode.READ)
def get_count(task_id: str) -> Op[dict[str, Any] | None]:
    """The task's row (its text, and its count once it has run), or None."""
    found: dict[str, Any] | None = yield row("wordcount.get", task_id=task_id)
    return found


class WordCount(Extension):
    name = "wordcount"
    component = Component("wordcount", __name__, tables=("word_counts",))
    sections = {"wordcount": WordCountSettings}
    routes = f"{__name__}.routes:group"

    def setup(self, manager: TaskManager) -> None:
        self.manager = manager
        self.settings = manager.settings.section("wordcount", WordCountSettings)
        manager.register("wordcount", self._count)

    async def submit(self, text: str) -> str:
        """Store a text and the task that counts it, together; the task's id."""
        if len(text.split()) > self.settings.max_words:
            raise ValueError(f"text has more than {self.settings.max_words} words")

        def linked(tasks: Sequence[NewTask]) -> list[Step]:
            return [count("wordcount.insert", task_id=tasks[0].id, text=text)]

        definition = TaskDefinition(name="count words", task_type="wordcount")
        (context,) = await self.manager.submit_batch([definition], linked=linked)
        return context.task_id

    async def words(self, task_id: str) -> int | None:
        """The count, once the task has completed (None before). ``LookupError`` for an
        unknown id."""
        found = await self.manager.store.run(get_count(task_id))
        if found is None:
            raise LookupError(f"no word count {task_id}")
        words: int | None = found["words"]
        return words

    async def _count(self, context: TaskContext) -> dict[str, int]:
        found = await self.manager.store.run(get_count(context.task_id))
        assert found is not None
        words = len(found["text"].split())
        await context.update_progress(0.5, f"{words} words")
        # Stored with the completion: both, or neither.
        context.write_on_completion(
            count("wordcount.set_words", task_id=context.task_id, words=words)
        )
        return {"words": words}
