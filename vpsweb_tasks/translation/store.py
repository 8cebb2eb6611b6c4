"""The ``translation_jobs`` table: the extension's component and its operations.

A job is stored with its task, in the task's insert transaction
(:func:`insert_jobs`, a step linked to ``TaskManager.submit_batch``); its result is
stored with the task's completion (``context.write_on_completion(result_step(...))``).
The operations run through ``manager.store.run(...)`` on the named queries of
``queries/<dialect>.sql`` (``translation.<name>``).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..models import TaskRecord, TaskStatus
from ..storage.logic import matchable
from ..storage.ops import Mode, Op, Step, count, operation, row, rows
from ..storage.queries import Component
from ..storage.rows import dumps, loads, loads_result, task_from_row
from ..storage.types import NewTask
from .errors import TranslationJobNotFoundError
from .models import KeyUsage, ModelUsage

__all__ = [
    "COMPONENT",
    "NewTranslationJob",
    "TranslationJobRow",
    "get_job",
    "insert_jobs",
    "list_jobs",
    "report_step",
    "result_step",
    "save_result",
    "save_step",
    "usage_by_key",
    "usage_by_model",
]

COMPONENT = Component("translation", "vpsweb_tasks.translation", tables=("translation_jobs",))


@dataclass(frozen=True, slots=True)
class NewTranslationJob:
    """A translation job to insert with its task. Languages are already normalised;
    ``metadata`` is JSON (author, title, poem_id...)."""

    id: str
    source_language: str
    target_language: str
    workflow_mode: str
    original_text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def row(self, task: NewTask) -> TranslationJobRow:
        """The row of this job with ``task`` as they are stored (no steps, no result
        yet), built rather than read back."""
        return TranslationJobRow(
            id=self.id,
            task=task.record(),
            source_language=self.source_language,
            target_language=self.target_language,
            workflow_mode=self.workflow_mode,
            original_text=self.original_text,
            metadata=self.metadata,
            steps={},
            step_states={},
            result=None,
            created_at=task.created_at,
            updated_at=task.created_at,
        )


@dataclass(frozen=True, slots=True)
class TranslationJobRow:
    """A ``translation_jobs`` row with the task it belongs to (read together)."""

    id: str
    task: TaskRecord
    source_language: str
    target_language: str
    workflow_mode: str
    original_text: str
    metadata: dict[str, Any]
    steps: dict[str, dict[str, Any]]
    """Checkpoints of finished workflow steps, by step name."""
    step_states: dict[str, dict[str, Any]]
    """What the workflow last reported of each step, by step name: ``{"state": "running"
    | "completed" | "failed", "attempt": n, "at": epoch seconds}``."""
    result: dict[str, Any] | None
    created_at: float
    updated_at: float

    @property
    def task_id(self) -> str:
        return self.task.id


def _job_from_row(found: Mapping[str, Any], task: TaskRecord) -> TranslationJobRow:
    result = found["result"]
    return TranslationJobRow(
        id=found["id"],
        task=task,
        source_language=found["source_language"],
        target_language=found["target_language"],
        workflow_mode=found["workflow_mode"],
        original_text=found["original_text"],
        metadata=loads(found["metadata"]),
        steps=loads(found["steps"]),
        step_states=loads(found["step_states"]),
        result=None if result is None else loads_result(result),
        created_at=float(found["created_at"]),
        updated_at=float(found["updated_at"]),
    )


def insert_jobs(items: Sequence[tuple[NewTask, NewTranslationJob]]) -> Step:
    """The step that stores the jobs of tasks inserted in the same transaction."""
    return count(
        "translation.insert_jobs",
        rows=dumps(
            [
                [
                    job.id,
                    task.id,
                    job.source_language,
                    job.target_language,
                    job.workflow_mode,
                    job.original_text,
                    dumps(job.metadata),
                    task.created_at,
                ]
                for task, job in items
            ]
        ),
    )


def _with_tasks(found: list[Mapping[str, Any]], tasks: list[Mapping[str, Any]]) -> list[Any]:
    by_id = {task["id"]: task_from_row(task) for task in tasks}
    return [_job_from_row(each, by_id[each["task_id"]]) for each in found]


@operation(Mode.SNAPSHOT)
def get_job(job_id: str) -> Op[TranslationJobRow | None]:
    """The job with its task, read from one snapshot; None if unknown."""
    if not matchable(job_id):
        return None
    found = yield row("translation.get_job", id=job_id)
    if found is None:
        return None
    task = yield row("get_task", id=found["task_id"])
    job: TranslationJobRow = _with_tasks([found], [task])[0]
    return job


@operation(Mode.SNAPSHOT)
def list_jobs(
    *, statuses: Collection[TaskStatus] | None = None, limit: int = 100, offset: int = 0
) -> Op[list[TranslationJobRow]]:
    """Jobs whose task has one of ``statuses`` (None: any), newest first."""
    found = yield rows(
        "translation.list_jobs",
        statuses=None if statuses is None else [TaskStatus(s).value for s in statuses],
        limit=limit,
        offset=offset,
    )
    if not found:
        return []
    tasks = yield rows("get_tasks", ids=[each["task_id"] for each in found])
    return _with_tasks(found, tasks)


@operation(Mode.STATEMENTS)
def save_step(job_id: str, step: str, checkpoint: dict[str, Any], *, now: float) -> Op[None]:
    """Record (insert or replace) the checkpoint of one finished step, keeping the other
    steps'. Written as the step finishes, whatever the task's status, so that work paid
    for is never lost. Raises :class:`TranslationJobNotFoundError` for an unknown job."""
    changed = yield count(
        "translation.save_step",
        id=job_id,
        step=step,
        path="$." + json.dumps(step),  # a quoted key: any step name is safe
        checkpoint=dumps(checkpoint),
        now=now,
    )
    if not changed:
        raise TranslationJobNotFoundError(job_id)


@operation(Mode.STATEMENTS)
def report_step(job_id: str, step: str, state: str, *, attempt: int, now: float) -> Op[None]:
    """Record what the workflow reported of one step (``running``, ``completed`` or
    ``failed``) in attempt ``attempt``, replacing that step's earlier report. Raises
    :class:`TranslationJobNotFoundError` for an unknown job."""
    changed = yield count(
        "translation.report_step",
        id=job_id,
        step=step,
        path="$." + json.dumps(step),
        report=dumps({"state": state, "attempt": attempt, "at": now}),
        now=now,
    )
    if not changed:
        raise TranslationJobNotFoundError(job_id)


def result_step(job_id: str, result: dict[str, Any], *, now: float) -> Step:
    """The step that records a job's final result, written with the task's completion
    (``context.write_on_completion``)."""
    return count("translation.save_result", id=job_id, result=dumps(result), now=now)


@operation(Mode.STATEMENTS)
def save_result(job_id: str, result: dict[str, Any], *, now: float) -> Op[None]:
    """Record a job's final result on its own. Raises :class:`TranslationJobNotFoundError`
    for an unknown job."""
    if not (yield result_step(job_id, result, now=now)):
        raise TranslationJobNotFoundError(job_id)


@operation(Mode.READ)
def usage_by_model(*, since: float) -> Op[list[ModelUsage]]:
    """Tokens and cost of the steps that finished since ``since``, by model."""
    return [
        _usage(ModelUsage, model=found["model"], found=found)
        for found in (yield rows("translation.usage_by_model", since=since))
    ]


@operation(Mode.READ)
def usage_by_key(*, since: float) -> Op[list[KeyUsage]]:
    """Tokens and cost of the steps that finished since ``since``, by the jobs'
    concurrency key (jobs without one left out)."""
    return [
        _usage(KeyUsage, key=found["key"], found=found)
        for found in (yield rows("translation.usage_by_key", since=since))
    ]


U = TypeVar("U", ModelUsage, KeyUsage)


def _usage(kind: type[U], *, found: Mapping[str, Any], **name: str) -> U:
    return kind(
        **name,
        steps=int(found["steps"]),
        prompt_tokens=int(found["prompt_tokens"] or 0),
        completion_tokens=int(found["completion_tokens"] or 0),
        cost=None if not found["priced"] else float(found["cost"]),
        estimated=bool(found["estimated"]),
    )
