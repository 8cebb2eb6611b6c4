"""Durable storage of tasks: the contract (:mod:`.base`) and its backends."""

from .base import TaskStore
from .sqlite import SQLiteTaskStore

__all__ = ["SQLiteTaskStore", "TaskStore"]
