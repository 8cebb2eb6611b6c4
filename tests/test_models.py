"""Task definitions are validated with errors that name the field; the status machine."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from vpsweb_tasks import TaskDefinition, TaskPriority, TaskStatus
from vpsweb_tasks.models import LEGAL_TRANSITIONS, MAX_METADATA_BYTES, TaskRecord


def test_document_signature_and_defaults() -> None:
    definition = TaskDefinition(name="Custom", task_type="custom_processing")
    assert definition.priority is TaskPriority.NORMAL
    assert definition.max_retries == 3
    assert definition.timeout_seconds is None
    assert definition.metadata == {}


def test_priorities_are_strings_on_the_wire_and_ordered() -> None:
    definition = TaskDefinition.model_validate({"name": "x", "task_type": "t", "priority": "high"})
    assert definition.priority is TaskPriority.HIGH
    ranks = [
        p.rank
        for p in (TaskPriority.LOW, TaskPriority.NORMAL, TaskPriority.HIGH, TaskPriority.CRITICAL)
    ]
    assert ranks == sorted(ranks)
    assert definition.model_dump(mode="json")["priority"] == "high"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"task_type": ""}, "task_type"),
        ({"task_type": "has spaces"}, "task_type"),
        ({"priority": "urgent"}, "priority"),
        ({"max_retries": -1}, "max_retries"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"timeout_seconds": -5}, "timeout_seconds"),
        ({"metadata": {"f": object()}}, "metadata"),
        ({"metadata": {"big": "x" * (MAX_METADATA_BYTES + 1)}}, "metadata"),
        ({"metadata": {"nan": float("nan")}}, "metadata"),
        ({"delay": -1}, "delay"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_invalid_definitions_name_the_field(fields: dict[str, Any], field: str) -> None:
    values: dict[str, Any] = {"name": "ok", "task_type": "ok", **fields}
    with pytest.raises(ValidationError) as caught:
        TaskDefinition(**values)
    assert [error["loc"][0] for error in caught.value.errors()] == [field]


def test_terminal_statuses_allow_no_way_out_except_requeue() -> None:
    assert LEGAL_TRANSITIONS[TaskStatus.COMPLETED] == frozenset()
    assert LEGAL_TRANSITIONS[TaskStatus.CANCELLED] == frozenset()
    assert LEGAL_TRANSITIONS[TaskStatus.FAILED] == {TaskStatus.PENDING}
    for status in TaskStatus:
        assert status.is_terminal == (
            status in {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED}
        )


def test_a_record_answers_to_the_names_the_context_and_http_api_use() -> None:
    now = datetime.now(UTC)
    record = TaskRecord(
        id="t-1",
        name="n",
        task_type="x",
        priority=TaskPriority.NORMAL,
        status=TaskStatus.FAILED,
        run_at=now,
        created_at=now,
        updated_at=now,
        error_message="boom",
    )
    assert (record.task_id, record.error) == ("t-1", "boom")
