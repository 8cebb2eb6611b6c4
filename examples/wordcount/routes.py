"""The extension's HTTP routes: ``POST /api/v1/wordcount`` and
``GET /api/v1/wordcount/{task_id}``, behind the API key like the others."""

from typing import Annotated

from fastapi import HTTPException, Path
from pydantic import BaseModel, Field

from vpsweb_tasks_http import Authorised, RouteGroup

from . import WordCount

group = RouteGroup(prefix="/api/v1/wordcount", tags=["word count"])


class CountRequest(BaseModel):
    text: str = Field(min_length=1, max_length=100_000)


class CountAccepted(BaseModel):
    task_id: str


class CountResult(BaseModel):
    task_id: str
    words: int | None
    """None until the task has run."""


def _extension(state: Authorised) -> WordCount:
    extension = state.manager.extension(WordCount.name)
    assert isinstance(extension, WordCount)
    return extension


@group.post("", status_code=202, summary="Count the words of a text in the background")
async def submit_count(body: CountRequest, state: Authorised) -> CountAccepted:
    try:
        return CountAccepted(task_id=await _extension(state).submit(body.text))
    except ValueError as exc:
        raise HTTPException(422, [{"loc": ["body", "text"], "msg": str(exc)}]) from None


@group.get("/{task_id}", summary="A text's word count")
async def get_count(
    task_id: Annotated[str, Path(min_length=1, max_length=100)], state: Authorised
) -> CountResult:
    try:
        words = await _extension(state).words(task_id)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from None
    return CountResult(task_id=task_id, words=words)
