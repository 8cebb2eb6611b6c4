"""How translation jobs are set up: the provider they call (or a custom workflow), what is
missing before they can run, and a live check of the provider."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import anyio
import anyio.to_thread
import httpx

from .errors import TranslationNotConfiguredError
from .models import STEPS, TranslationInput, WorkflowMode
from .settings import ProviderSettings, TranslationSettings
from .vpsweb import vpsweb_workflow_factory
from .workflow import TranslationWorkflow

__all__ = ["HttpClients", "ProbeResult", "Setup", "WorkflowFactory", "probe"]

#: Makes the workflow of one job (VPSWeb: ``lambda input: TranslationWorkflow(...)``).
WorkflowFactory = Callable[[TranslationInput], TranslationWorkflow]


class Setup:
    """The extension's configuration: ``providers``, ``translation`` and an injected
    workflow factory (which needs no provider)."""

    def __init__(
        self,
        providers: Mapping[str, ProviderSettings],
        settings: TranslationSettings,
        workflow_factory: WorkflowFactory | None = None,
    ) -> None:
        self.providers = providers
        self.settings = settings
        self.workflow_factory = workflow_factory

    def provider(self) -> tuple[str | None, ProviderSettings | None, list[str]]:
        """The provider jobs call (its name and settings), or what is wrong."""
        providers = self.providers
        name = self.settings.provider
        if name is not None and name in providers:
            return name, providers[name], []
        if name is not None:
            known = ", ".join(sorted(providers)) or "none"
            problem = (
                f"translation.provider is {name!r} but providers has no such entry"
                f" (configured: {known})"
            )
        elif not providers:
            problem = (
                "no LLM provider: set providers.<name>.base_url (any OpenAI-compatible"
                " server, e.g. http://127.0.0.1:11434/v1 for Ollama) and"
                " providers.<name>.models (a model per workflow mode)"
            )
        elif len(providers) > 1:
            problem = (
                f"several providers ({', '.join(sorted(providers))}): set translation.provider"
            )
        else:
            (only,) = providers
            return only, providers[only], []
        return name, None, [problem]

    def factory(self) -> WorkflowFactory | None:
        """The injected workflow factory, VPSWeb's (``translation.workflow: vpsweb``), or
        None for the built-in workflow."""
        if self.workflow_factory is not None:
            return self.workflow_factory
        if self.settings.workflow == "vpsweb":
            factory: WorkflowFactory = vpsweb_workflow_factory()
            return factory
        return None

    @property
    def workflow_name(self) -> str:
        if self.workflow_factory is not None:
            return getattr(self.workflow_factory, "__qualname__", repr(self.workflow_factory))
        return self.settings.workflow  # the config value: builtin or vpsweb

    def problems(self, modes: Iterable[WorkflowMode] = tuple(WorkflowMode)) -> list[str]:
        """What stops jobs of these modes from running (empty: nothing)."""
        try:
            if self.factory() is not None:
                return []
        except TranslationNotConfiguredError as exc:
            return exc.problems
        name, provider, problems = self.provider()
        if provider is None:
            return problems
        key = f"providers.{name}"
        if not provider.base_url:
            problems.append(f"{key}.base_url is not set")
        for mode in modes:
            missing = [step for step in STEPS if provider.model_for(mode.value, step) is None]
            if missing:
                problems.append(
                    f"{key}.models has no model for workflow mode {mode.value}"
                    f" (set {key}.models.{mode.value} or models.default)"
                )
        if provider.api_key_env and provider.api_key() is None:
            problems.append(
                f"environment variable {provider.api_key_env} ({key}.api_key_env) is not set"
            )
        return problems

    def require(self, modes: Iterable[WorkflowMode]) -> None:
        """Raise :class:`TranslationNotConfiguredError` listing what to configure."""
        problems = self.problems(modes)
        if problems:
            raise TranslationNotConfiguredError(problems)


class HttpClients:
    """httpx clients for provider calls, sharing one TLS context: loading the CA bundle
    is slow, so it is loaded once, in a worker thread, not once per job on the loop.
    ``transport`` is handed to every client (tests, proxies)."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.transport = transport
        self._ssl: ssl.SSLContext | None = None

    async def client(self, timeout: float) -> httpx.AsyncClient:
        if self._ssl is None:
            self._ssl = await anyio.to_thread.run_sync(httpx.create_ssl_context)
        return httpx.AsyncClient(timeout=timeout, transport=self.transport, verify=self._ssl)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What ``GET {base_url}/models`` answered."""

    models: list[str] | None
    """The model ids listed (None if the answer was not a model list)."""
    latency_ms: float | None
    error: str | None


async def probe(clients: HttpClients, provider: ProviderSettings, timeout: float) -> ProbeResult:
    """List the provider's models, at most ``timeout`` seconds long."""
    assert provider.base_url
    key = provider.api_key()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    error: str | None = None
    available: list[str] | None = None
    latency: float | None = None
    started = time.perf_counter()
    with anyio.move_on_after(timeout) as deadline:
        try:
            async with await clients.client(timeout) as http:
                response = await http.get(
                    provider.base_url.rstrip("/") + "/models", headers=headers
                )
            latency = (time.perf_counter() - started) * 1000
            if response.status_code >= 400:
                error = f"GET /models answered HTTP {response.status_code}"
            else:
                available = _model_ids(response)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
    if deadline.cancelled_caught:
        error = f"no answer within {timeout:g}s"
    return ProbeResult(models=available, latency_ms=latency, error=error)


def _model_ids(response: httpx.Response) -> list[str] | None:
    try:
        data = response.json()
        return sorted(str(item["id"]) for item in data["data"])
    except (ValueError, KeyError, TypeError):
        return None
