"""The SQLite claim reads waiting tasks in dispatch order from its index, with or without
planner statistics: a claim must not sort the whole queue (1M pending would take ~0.5 s
a claim; see benchmarks/depth.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from vpsweb_tasks.storage.sqlite import SQLiteTaskStore, claim_sql

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("typed", [False, True])
@pytest.mark.parametrize("by_priority", [True, False])
@pytest.mark.parametrize("analyzed", [False, True])
async def test_the_claim_uses_its_index_and_never_sorts(
    tmp_path: Path, typed: bool, by_priority: bool, analyzed: bool
) -> None:
    path = tmp_path / "plans.db"
    store = SQLiteTaskStore(path)
    await store.open()
    await store.close()
    conn = sqlite3.connect(path)
    try:
        # Many finished rows and a few waiting: the shape that misled the planner.
        conn.executemany(
            "INSERT INTO background_tasks (id, name, task_type, priority, status, max_retries,"
            " run_at, created_at, updated_at) VALUES (?, 'n', 'noop', 1, ?, 3, 0, 0, 0)",
            [(f"t{i}", "completed" if i % 10 else "pending") for i in range(2000)],
        )
        if analyzed:
            conn.execute("ANALYZE")
        sql = claim_sql(typed=typed, by_priority=by_priority)
        params = {"worker": "w", "expires": 0.0, "now": 0.0, "limit": 1, "types": '["noop"]'}
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    finally:
        conn.close()
    index = "ix_background_tasks_dispatch" if by_priority else "ix_background_tasks_fifo"
    assert any(index in step for step in plan), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan
