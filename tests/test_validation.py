"""What storage and JSON can hold (vpsweb_tasks.validation), checked at the library's
boundary: models raise pydantic's ValidationError naming the field, plain arguments
InvalidInputError naming the argument; nothing is stored. Text the system makes itself
(an error's message) is stored written out instead, so that it always reads back."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from pydantic import ValidationError

from vpsweb_tasks import (
    ErrorCategory,
    InvalidInputError,
    TaskContext,
    TaskDefinition,
    TaskManager,
    TaskNotFoundError,
    TaskStatus,
)
from vpsweb_tasks.translation import CompareRequest, TranslationRequest
from vpsweb_tasks.validation import (
    MAX_JSON_DEPTH,
    check_json_object,
    check_text,
    encode_json,
    json_problem,
    storable_text,
    text_problem,
)

pytestmark = pytest.mark.anyio


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


# --- the rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("a\x00b", r"NUL character \(\\x00, at index 1\)"),
        ("ok\udfff", r"lone surrogate \\udfff at index 2"),
        ("\ud800", r"lone surrogate \\ud800 at index 0"),
    ],
)
def test_text_with_a_nul_or_a_lone_surrogate_is_refused(value: str, problem: str) -> None:
    found = text_problem(value)
    assert found is not None
    assert re.search(problem, found), found
    with pytest.raises(InvalidInputError, match=problem) as raised:
        check_text(value, "reason")
    assert raised.value.field == "reason"
    assert raised.value.category is ErrorCategory.VALIDATION


@pytest.mark.parametrize("value", ["", " ", "plain", "é\U0001d11e\u2028", "x" * 10_000])
def test_any_other_text_is_storable(value: str) -> None:
    assert text_problem(value) is None
    assert check_text(value, "name") == value
    assert storable_text(value) == value


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"k": "\udfff"}, r"^k: lone surrogate"),
        ({"\udfff": 1}, r"^\\udfff: key: lone surrogate"),
        ({"a": [1, {"b": math.nan}]}, r"^a\.1\.b: nan is not a JSON number"),
        ({"a": math.inf}, r"^a: inf is not a JSON number"),
        ({"a": -math.inf}, r"^a: -inf is not a JSON number"),
        ({"deep": nested(MAX_JSON_DEPTH)}, rf"nests deeper than {MAX_JSON_DEPTH} levels"),
        ({"blob": "x" * 70_000}, r"at most 65536 bytes"),
        ({"when": object()}, r"must be JSON-serialisable"),
    ],
)
def test_json_storage_cannot_hold_is_refused_naming_the_place(
    value: dict[str, Any], problem: str
) -> None:
    found = json_problem(value)
    assert found is not None
    assert re.search(problem, found), found
    with pytest.raises(InvalidInputError, match=problem.lstrip("^")) as raised:
        check_json_object(value, "payload")
    assert raised.value.field == "payload"


def test_odd_but_storable_json_is_accepted() -> None:
    value = {
        "fn": "a\x00b",  # NUL inside a JSON string: stored as the escape \u0000
        "definition": 10**400,
        "self": [None, True, -0.0, 1e308],
        "\u2028é\U0001d11e": nested(MAX_JSON_DEPTH - 1),
    }
    assert json_problem(value) is None
    assert json.loads(encode_json(value)) == value


def test_depth_is_checked_without_recursion() -> None:
    assert json_problem({"deep": nested(200_000)}) is not None  # no RecursionError


def test_a_result_is_not_bounded_in_size() -> None:
    big = {"text": "x" * 100_000}
    assert json_problem(big) is not None
    assert json_problem(big, max_bytes=None) is None


def test_text_the_system_makes_is_written_out() -> None:
    assert storable_text("bad \x00 \udfff") == "bad \\x00 \\udfff"
    assert text_problem(storable_text("\ud800\x00")) is None


# --- models ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "\udfff"}, "name"),
        ({"name": "a\x00b"}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"timeout_seconds": math.nan}, "timeout_seconds"),
        ({"timeout_seconds": math.inf}, "timeout_seconds"),
        ({"delay": math.inf}, "delay"),
        ({"delay": -1}, "delay"),
        ({"delay": 10**12}, "delay"),
        ({"run_at": "0001-01-01T00:00:00+14:00"}, "run_at"),  # no UTC date in years 1-9999
        ({"run_at": "9999-12-31T23:59:59-14:00"}, "run_at"),
        ({"metadata": {"k": "\udfff"}}, "metadata"),
        ({"metadata": {"k": math.nan}}, "metadata"),
        ({"metadata": {"k": nested(100)}}, "metadata"),
        ({"task_type": "a\x00"}, "task_type"),
    ],
)
def test_a_task_definition_names_the_field_storage_cannot_hold(
    fields: dict[str, Any], field: str
) -> None:
    values = {"name": "ok", "task_type": "work", **fields}
    with pytest.raises(ValidationError) as raised:
        TaskDefinition(**values)
    assert [error["loc"] for error in raised.value.errors()] == [(field,)]


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"original_text": "a\x00b"}, ("original_text",)),
        ({"original_text": "\udfff"}, ("original_text",)),
        ({"metadata": {"title": "\udfff"}}, ("metadata", "title")),
        ({"metadata": {"author": "a\x00"}}, ("metadata", "author")),
        ({"metadata": {"extra": math.nan}}, ("metadata",)),
        ({"metadata": {"extra": {"\udfff": 1}}}, ("metadata",)),
        ({"source_language": "\udfff"}, ("source_language",)),
    ],
)
def test_a_translation_request_names_the_field_storage_cannot_hold(
    fields: dict[str, Any], loc: tuple[str, ...]
) -> None:
    values = {"original_text": "poem", "source_language": "en", "target_language": "pl"}
    with pytest.raises(ValidationError) as raised:
        TranslationRequest.model_validate({**values, **fields})
    assert [error["loc"] for error in raised.value.errors()] == [loc]


def test_a_comparison_timeout_must_be_finite() -> None:
    values = {"original_text": "poem", "source_language": "en", "target_language": "pl"}
    with pytest.raises(ValidationError) as raised:
        CompareRequest.model_validate({**values, "timeout": math.nan})
    assert [error["loc"] for error in raised.value.errors()] == [("timeout",)]


# --- the manager ----------------------------------------------------------------------------


def work(**fields: Any) -> TaskDefinition:
    return TaskDefinition(name=fields.pop("name", "work"), task_type="work", **fields)


async def test_no_payload_key_clashes_with_submits_own_parameters(manager: TaskManager) -> None:
    @manager.task("work")
    async def run(context: TaskContext) -> dict[str, Any]:
        return dict(context.payload)

    payload = {"fn": 1, "definition": 2, "self": 3, "payload": 4, "a key": 5}
    context = await manager.submit(work(), "work", **payload)
    assert context.payload == payload
    record = await context.wait(timeout=10)
    assert (record.status, record.payload, record.result) == (
        TaskStatus.COMPLETED,
        payload,
        payload,
    )
    # The documented shapes still work: fn as a callable, fn left out.
    assert (await manager.submit(work(), run, fn="x")).payload == {"fn": "x"}
    assert (await manager.submit(work(), definition="y")).payload == {"definition": "y"}
    # And a batch takes its payloads as dicts.
    [batched] = await manager.submit_batch([work()], payloads=[{"fn": 1}])
    assert batched.payload == {"fn": 1}


@pytest.mark.parametrize(
    "payload",
    [{"k": "\udfff"}, {"k": math.nan}, {"k": math.inf}, {"k": nested(100)}, {"k": "x" * 70_000}],
    ids=["surrogate", "nan", "inf", "deep", "large"],
)
async def test_a_payload_storage_cannot_hold_is_refused_and_nothing_stored(
    manager: TaskManager, payload: dict[str, Any]
) -> None:
    manager.register("work", _noop)
    with pytest.raises(InvalidInputError, match=r"^payload: ") as raised:
        await manager.submit(work(), **payload)
    assert raised.value.field == "payload"
    with pytest.raises(InvalidInputError):
        await manager.submit_batch([work(), work()], "work", payloads=[{}, payload])
    assert await manager.list_tasks() == []


async def test_a_pause_reason_storage_cannot_hold_is_refused(manager: TaskManager) -> None:
    for reason in ("\udfff", "a\x00b"):
        with pytest.raises(InvalidInputError) as raised:
            await manager.pause(reason)
        assert raised.value.field == "reason"
    status = await manager.queue_status()
    assert not status.paused
    await manager.pause("maintenance \u2028 é")
    assert (await manager.queue_status()).pause_reason == "maintenance \u2028 é"


async def test_ids_and_types_no_task_can_have_are_not_found(manager: TaskManager) -> None:
    for key in ("\x00", "a\udfff"):
        with pytest.raises(TaskNotFoundError):
            await manager.get_task(key)
        with pytest.raises(TaskNotFoundError):
            await manager.cancel(key)
        with pytest.raises(TaskNotFoundError):
            await manager.requeue(key)
        assert await manager.list_tasks(task_type=key) == []
        assert await manager.list_dead_letters(task_type=key) == []
        assert await manager.requeue_all(task_type=key) == 0


async def test_progress_storage_cannot_hold_fails_the_task_as_invalid(manager: TaskManager) -> None:
    @manager.task("work")
    async def run(context: TaskContext) -> None:
        await context.update_progress(0.5, "half \udfff")

    record = await (await manager.submit(work(max_retries=0))).wait(timeout=10)
    assert (record.status, record.error_type, record.error_category) == (
        TaskStatus.FAILED,
        "InvalidInputError",
        ErrorCategory.VALIDATION,
    )
    assert record.error_message is not None
    assert record.error_message.startswith("message:")


async def test_a_result_storage_cannot_hold_fails_the_task(manager: TaskManager) -> None:
    @manager.task("work")
    async def run(context: TaskContext) -> dict[str, Any]:
        return {"name": "\udfff", "score": math.nan}

    record = await (await manager.submit(work(max_retries=0))).wait(timeout=10)
    assert (record.status, record.error_type) == (TaskStatus.FAILED, "ResultNotSerializableError")


async def test_an_error_whatever_its_text_is_stored_and_reads_back(manager: TaskManager) -> None:
    class WeirdError(Exception):
        pass

    @manager.task("work")
    async def run(context: TaskContext) -> None:
        raise WeirdError("file \udcff\udcfe.txt has a NUL: \x00")

    record = await (await manager.submit(work(max_retries=0))).wait(timeout=10)
    assert record.status is TaskStatus.FAILED
    assert record.error_message == "file \\udcff\\udcfe.txt has a NUL: \\x00"
    [execution] = await manager.list_executions(record.id)
    assert execution.error_message == record.error_message
    stored = await manager.get_task(record.id)
    json.dumps(stored.error_message, ensure_ascii=False).encode("utf-8")  # an answer can hold it


async def _noop(context: TaskContext) -> None:
    return None
