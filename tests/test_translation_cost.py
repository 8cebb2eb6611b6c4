"""Token and cost accounting of translation jobs, and the per-job cost cap, against the
loopback OpenAI-compatible server (its reported usage is scripted per call)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from vpsweb_tasks import BreakerRegistry, TaskStatus
from vpsweb_tasks.config import Settings
from vpsweb_tasks.errors import ConfigError, ErrorCategory
from vpsweb_tasks.translation import get_vpsweb_adapter
from vpsweb_tasks_http import create_app

from .http_server import serve
from .llm_server import FakeLLM, Reply
from .test_translation import DOCUMENT_REQUEST, breakers, llm, make_manager, provider

__all__ = ["breakers", "llm"]  # the fixtures, shared

pytestmark = pytest.mark.anyio

#: Per million tokens: prompt, completion.
PRICES = {
    "m-initial": {"prompt": 1.0, "completion": 2.0},
    "m-editor": {"prompt": 3.0, "completion": 4.0},
    "m-revision": {"prompt": 5.0, "completion": 6.0},
}
USAGE = [(1200, 340), (2100, 560), (3300, 780)]


def cost(model: str, prompt: int, completion: int) -> float:
    price = PRICES[model]
    return (prompt * price["prompt"] + completion * price["completion"]) / 1_000_000


def script(llm: FakeLLM) -> None:
    for prompt, completion in USAGE:
        usage = {"prompt_tokens": prompt, "completion_tokens": completion}
        llm.reply(Reply(usage={**usage, "total_tokens": prompt + completion}))


async def test_tokens_and_costs_match_what_the_provider_reported(
    llm: FakeLLM, settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    script(llm)
    settings = settings_factory(providers=provider(llm, prices=PRICES))
    async with make_manager(settings, breakers) as manager:
        adapter = get_vpsweb_adapter(manager)
        job = await adapter.submit(DOCUMENT_REQUEST)
        await manager.wait(job.job_id, timeout=10)
        result = await adapter.result(job.job_id)
        status = await adapter.status(job.job_id)
    models = ["m-initial", "m-editor", "m-revision"]
    assert [(s.tokens.prompt_tokens, s.tokens.completion_tokens) for s in result.steps] == USAGE
    assert not any(s.tokens.estimated for s in result.steps)
    expected = [cost(m, p, c) for m, (p, c) in zip(models, USAGE, strict=True)]
    assert [s.cost for s in result.steps] == pytest.approx(expected)
    assert result.cost == pytest.approx(sum(expected))
    assert result.token_usage.prompt_tokens == sum(p for p, _ in USAGE)
    assert result.token_usage.completion_tokens == sum(c for _, c in USAGE)
    assert status.cost == pytest.approx(sum(expected))
    assert status.token_usage == result.token_usage


async def test_without_reported_usage_tokens_are_estimated_and_marked(
    llm: FakeLLM, settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    llm.always(Reply(usage=None))
    settings = settings_factory(providers=provider(llm, prices=PRICES))
    async with make_manager(settings, breakers) as manager:
        adapter = get_vpsweb_adapter(manager)
        job = await adapter.submit(DOCUMENT_REQUEST)
        await manager.wait(job.job_id, timeout=10)
        result = await adapter.result(job.job_id)
    first = result.steps[0]
    prompt = "\n".join(message["content"] for message in llm.calls[0].messages)
    answer = (
        "<translation>m-initial translation, call 1</translation>"
        "<notes>notes from m-initial</notes>"
    )
    assert first.tokens.estimated
    assert first.tokens.prompt_tokens == math.ceil(len(prompt) / 4)
    assert first.tokens.completion_tokens == math.ceil(len(answer) / 4)
    assert first.cost == pytest.approx(
        cost("m-initial", first.tokens.prompt_tokens, first.tokens.completion_tokens)
    )
    assert result.token_usage.estimated


async def test_a_cost_cap_stops_the_job_before_the_step_that_would_exceed_it(
    llm: FakeLLM, settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    script(llm)
    spent = cost("m-initial", *USAGE[0]) + cost("m-editor", *USAGE[1])
    # Room for the first two steps as they were billed, not for an estimate of the third
    # (its prompt alone, at m-revision's price, takes it over).
    cap = spent + 0.0000001
    settings = settings_factory(providers=provider(llm, prices=PRICES))
    async with make_manager(settings, breakers) as manager:
        adapter = get_vpsweb_adapter(manager)
        job = await adapter.submit({**DOCUMENT_REQUEST, "max_cost": cap})
        record = await manager.wait(job.job_id, timeout=10)
        status = await adapter.status(job.job_id)
    assert record.status is TaskStatus.FAILED  # never retried: retrying cannot help
    assert (record.error_category, record.attempts) == (ErrorCategory.BUDGET, 1)
    assert record.error_message is not None
    assert "translator_revision" in record.error_message
    assert "max_cost" in record.error_message
    assert [call.model for call in llm.calls] == ["m-initial", "m-editor"]
    assert status.steps_completed == ["initial_translation", "editor_review"]
    assert status.cost == pytest.approx(spent)
    assert status.max_cost == pytest.approx(cap)


async def test_the_lower_of_the_request_and_config_caps_applies(
    llm: FakeLLM, settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    settings = settings_factory(
        providers=provider(llm, prices=PRICES), translation={"max_cost_per_job": 0.5}
    )
    async with make_manager(settings, breakers) as manager:
        adapter = get_vpsweb_adapter(manager)
        await manager.pause()  # only the accepted caps matter here
        loose = await adapter.submit({**DOCUMENT_REQUEST, "max_cost": 10})
        tight = await adapter.submit({**DOCUMENT_REQUEST, "max_cost": 0.01})
        default = await adapter.submit(DOCUMENT_REQUEST)
    assert [j.max_cost for j in (loose, tight, default)] == [0.5, 0.01, 0.5]


@pytest.mark.parametrize(
    ("prices", "key"),
    [
        ({"m": {"prompt": "cheap", "completion": 1}}, "providers.local.prices.m.prompt"),
        ({"m": {"prompt": -1, "completion": 1}}, "providers.local.prices.m.prompt"),
        ({"m": {"prompt": 1}}, "providers.local.prices.m.completion"),
    ],
)
async def test_prices_that_are_not_prices_name_the_key(
    prices: dict[str, Any],
    key: str,
    settings_factory: Callable[..., Settings],
    breakers: BreakerRegistry,
) -> None:
    settings = settings_factory(providers=provider(None, prices=prices))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        async with make_manager(settings, breakers):
            pass


async def test_a_bad_max_cost_is_422_naming_it(
    llm: FakeLLM, settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    settings = settings_factory(providers=provider(llm, prices=PRICES))
    manager = make_manager(settings, breakers)
    app = create_app(settings, manager=manager)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        for bad in (0, -1, "lots"):
            answer = await client.post(
                "/api/v1/background-tasks/translation", json={**DOCUMENT_REQUEST, "max_cost": bad}
            )
            assert answer.status_code == 422, bad
            assert answer.json()["detail"][0]["loc"][-1] == "max_cost"


async def test_usage_totals_over_http_and_in_metrics(
    llm: FakeLLM, settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    script(llm)
    settings = settings_factory(providers=provider(llm, prices=PRICES))
    manager = make_manager(settings, breakers)
    app = create_app(settings, manager=manager)
    tasks = "/api/v1/background-tasks"
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        request = {**DOCUMENT_REQUEST, "user": "ann"}
        job_id = (await client.post(f"{tasks}/translation", json=request)).json()["job_id"]
        await manager.wait(job_id, timeout=10)
        status = (await client.get(f"{tasks}/translation/{job_id}")).json()
        usage = (await client.get(f"{tasks}/translation/usage")).json()
        vpsweb = (await client.get(f"{tasks}/vpsweb/status")).json()
        metrics = (await client.get("/metrics")).text
    models = ["m-initial", "m-editor", "m-revision"]
    expected = [cost(m, p, c) for m, (p, c) in zip(models, USAGE, strict=True)]
    assert status["cost"] == pytest.approx(sum(expected))
    assert status["token_usage"]["prompt_tokens"] == sum(p for p, _ in USAGE)
    assert usage["cost"] == pytest.approx(sum(expected))
    assert usage["currency"] == "USD"
    assert [
        (m["model"], m["prompt_tokens"], m["completion_tokens"]) for m in usage["by_model"]
    ] == [
        ("m-editor", *USAGE[1]),
        ("m-initial", *USAGE[0]),
        ("m-revision", *USAGE[2]),
    ]
    assert [(k["key"], k["steps"], k["prompt_tokens"]) for k in usage["by_key"]] == [
        ("user:ann", 3, sum(p for p, _ in USAGE))
    ]
    assert usage["by_key"][0]["cost"] == pytest.approx(sum(expected))
    assert vpsweb["usage"] == usage
    line = 'vpsweb_tasks_translation_tokens_window{kind="prompt",model="m-editor"} 2100.0'
    assert line in metrics
    assert 'vpsweb_tasks_translation_cost_window{model="m-revision"}' in metrics
