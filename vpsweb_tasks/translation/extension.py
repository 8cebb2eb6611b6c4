"""The translation extension: VPSWeb's translation jobs on the core.

::

    manager = TaskManager(settings, extensions=[TranslationExtension()])

It adds the ``translation_jobs`` table (its migrations and named queries, both backends),
reads the ``providers`` and ``translation`` config sections, registers the ``translation``
task type, and names its HTTP routes (``vpsweb_tasks_http.routes.translation``), which
the HTTP app adds. ``vpsweb-tasks serve`` and ``worker`` install it by default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import httpx

from ..manager import Extension
from .adapter import TASK_TYPE, VPSWebAdapter
from .settings import Providers, TranslationSettings
from .store import COMPONENT

if TYPE_CHECKING:
    from ..manager import TaskManager
    from .providers import WorkflowFactory

__all__ = ["TranslationExtension", "get_vpsweb_adapter"]


class TranslationExtension(Extension):
    """Translation jobs. ``workflow_factory`` runs VPSWeb's own workflow (or any with its
    interface) instead of the built-in one; ``transport`` is handed to the httpx client
    of provider calls (tests, proxies)."""

    name: ClassVar[str] = TASK_TYPE
    component = COMPONENT
    sections = {"providers": Providers, "translation": TranslationSettings}
    routes = "vpsweb_tasks_http.routes.translation:group"

    def __init__(
        self,
        *,
        workflow_factory: WorkflowFactory | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.workflow_factory = workflow_factory
        self.transport = transport
        self.adapter: VPSWebAdapter | None = None
        """The manager's adapter (set by :meth:`setup`)."""

    def setup(self, manager: TaskManager) -> None:
        VPSWebAdapter(manager, workflow_factory=self.workflow_factory, transport=self.transport)


def get_vpsweb_adapter(manager: TaskManager) -> VPSWebAdapter:
    """The translation adapter of ``manager``. Raises ``KeyError`` if the translation
    extension is not installed on it."""
    extension = manager.extension(TranslationExtension.name)
    assert isinstance(extension, TranslationExtension)
    assert extension.adapter is not None
    return extension.adapter
