"""Two processes writing one SQLite file in turns: how long a writer waits for the write
lock, with SQLite's busy handler alone and with the side lock's hand-off
(``storage/handoff.py``).

    .venv/bin/python benchmarks/handoff.py [--transactions 2000] [--repeat 3] [--dir /tmp]

Each of two processes runs ``--transactions`` write transactions, as the SQLite store's
database thread does (``BEGIN IMMEDIATE``, a few INSERTs, ``COMMIT``; ``busy_timeout`` 30
s; WAL, ``synchronous=NORMAL``), with a short pause between them, so that each often finds
the other holding the lock. ``busy``: SQLite's busy handler alone (main); ``handoff``: the
side lock around each transaction. Prints the wall time of the run, the mean time a
transaction waited before it began (the hand-off and ``BEGIN IMMEDIATE``) and the mean
time inside it (its statements and ``COMMIT``, where SQLite's busy handler may sleep too:
a commit's checkpoint and the other writer's restart of the WAL wait on each other). The
modes take turns, ``--repeat`` times; medians. Run by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, sqlite3, sys, time
sys.path[:0] = [sys.argv[4]]
from vpsweb_tasks.storage.handoff import WriteHandoff
path, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
conn = sqlite3.connect(path, isolation_level=None, timeout=30)
conn.execute("PRAGMA synchronous=NORMAL")
handoff = WriteHandoff.open(path, wait=1.0) if mode == "handoff" else None
print("READY", flush=True)
sys.stdin.readline()
held = waited = 0.0
start = time.perf_counter()
for i in range(n):
    asked = time.perf_counter()
    taken = handoff is not None and handoff.acquire()
    conn.execute("BEGIN IMMEDIATE")
    got = time.perf_counter()
    for _ in range(4):
        conn.execute("INSERT INTO t (v) VALUES (?)", (i,))
    conn.execute("COMMIT")
    if taken:
        handoff.release()
    done = time.perf_counter()
    waited += got - asked
    held += done - got
    time.sleep(0.0002)
print(json.dumps({"elapsed": time.perf_counter() - start, "held": held, "waited": waited}))
"""


def run(folder: Path, mode: str, n: int) -> tuple[float, float, float]:
    path = folder / f"{mode}-{time.monotonic_ns()}.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
    conn.close()
    root = str(Path(__file__).resolve().parent.parent)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), mode, str(n), root],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for child in children:
        assert child.stdout is not None
        assert child.stdout.readline() == "READY\n"
    start = time.perf_counter()
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    results = []
    for child in children:
        out, _ = child.communicate()
        results.append(json.loads(out.strip().splitlines()[-1]))
    elapsed = time.perf_counter() - start
    return (
        elapsed,
        sum(r["waited"] for r in results) / (2 * n),
        sum(r["held"] for r in results) / (2 * n),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    found: dict[str, list[tuple[float, float, float]]] = {"busy": [], "handoff": []}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="handoff-") as tmp:
        for r in range(args.repeat):
            for mode in found:
                elapsed, wait, inside = run(Path(tmp), mode, args.transactions)
                found[mode].append((elapsed, wait, inside))
                print(
                    f"  run {r + 1} {mode:<8} {elapsed:6.2f} s, {wait * 1e3:6.3f} ms before"
                    f" and {inside * 1e3:6.3f} ms inside a transaction"
                )
    print(
        f"\n2 processes x {args.transactions:,} write transactions, {args.repeat} runs each,"
        f" interleaved; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    for mode, runs in found.items():
        print(
            f"{mode:<8} {statistics.median(e for e, _, _ in runs):6.2f} s"
            f"  {statistics.median(w for _, w, _ in runs) * 1e3:6.3f} ms before"
            f" and {statistics.median(i for _, _, i in runs) * 1e3:6.3f} ms inside a transaction"
        )


if __name__ == "__main__":
    main()
