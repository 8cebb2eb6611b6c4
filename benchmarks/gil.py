"""Why the database thread does not run beside the event loop: the GIL hand-off.

Python's sqlite3 releases the GIL around every ``sqlite3_step`` and must take it back
afterwards. While another thread runs Python, taking it back waits until that thread
blocks or its switch interval (``sys.getswitchinterval()``, 5 ms) runs out. This script
times INSERTs on a second thread, alone and beside a thread that keeps the GIL busy, at
two switch intervals, and prints microseconds per statement.

    .venv/bin/python benchmarks/gil.py   # --statements 2000 --dir DIR
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path


def statements(conn: sqlite3.Connection, n: int) -> float:
    """Seconds for ``n`` INSERTs, committed every 50 (as a group commit would)."""
    began = time.perf_counter()
    conn.execute("BEGIN")
    for i in range(n):
        conn.execute("INSERT INTO t (a, b, c) VALUES (?, ?, ?)", (f"x{i}", f"y{i % 100}", i * 1.5))
        if i % 50 == 49:
            conn.execute("COMMIT")
            conn.execute("BEGIN")
    conn.execute("COMMIT")
    return time.perf_counter() - began


def beside_busy_thread(conn: sqlite3.Connection, n: int) -> tuple[float, float]:
    """Run the statements on a thread while this one spins in Python; returns the
    statements' seconds and the spinner's share of its solo rate."""
    elapsed = 0.0

    def work() -> None:
        nonlocal elapsed
        elapsed = statements(conn, n)

    solo_began, spins = time.perf_counter(), 0
    while time.perf_counter() - solo_began < 0.2:
        sum(range(100))
        spins += 1
    solo_rate = spins / (time.perf_counter() - solo_began)
    thread = threading.Thread(target=work)
    began, spins = time.perf_counter(), 0
    thread.start()
    while thread.is_alive():
        sum(range(100))
        spins += 1
    return elapsed, spins / (time.perf_counter() - began) / solo_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statements", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=Path.cwd())
    args = parser.parse_args()
    n = args.statements
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        conn = sqlite3.connect(
            Path(folder) / "gil.db", isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b TEXT, c REAL)")
        conn.execute("CREATE INDEX t_a ON t (a)")
        conn.execute("CREATE INDEX t_bc ON t (b, c)")
        default = sys.getswitchinterval()
        print(f"{n:,} INSERTs on a second thread; 2 CPUs; WAL, synchronous=NORMAL")
        print(f"{'setting':46} {'us/statement':>12}  busy thread's rate")
        print("-" * 80)
        alone = statements(conn, n)
        print(f"{'alone':46} {alone / n * 1e6:12.1f}")
        for interval in (default, 0.0005):
            sys.setswitchinterval(interval)
            took, share = beside_busy_thread(conn, n)
            label = f"beside a busy Python thread, switch {interval * 1e3:g} ms"
            print(f"{label:46} {took / n * 1e6:12.1f}  {share:.0%} of its solo rate")
        sys.setswitchinterval(default)
        conn.close()


if __name__ == "__main__":
    main()
