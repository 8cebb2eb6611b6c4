"""A/B: end-to-end no-op throughput of two (or more) checkouts, interleaved run by run.

    .venv/bin/python benchmarks/ab.py BASE [OTHER ...] [--tasks 10000] [--pairs 5]
        [--synchronous NORMAL] [--concurrency 32] [--dir /tmp]

Each BASE/OTHER is a git revision (``HEAD~1``, a commit, a branch) or the path of a
checkout; ``.`` is the working tree. Revisions are checked out into temporary worktrees,
removed afterwards. Every run is a fresh interpreter that imports ``vpsweb_tasks`` from its
checkout (the editable install's finder is left out) and runs that checkout's own
``benchmarks/throughput.py`` ``ours()``: 16 submitters, a ``TaskManager`` on a new SQLite
file, the clock stopped at the last ``task_completed``. The checkouts take turns, so a
machine that speeds up or slows down over the minutes (this one does, by +-10%) moves them
alike. Prints each run, then medians: tasks/s and CPU per task of the event-loop and
database threads. Use it to decide whether a change is worth keeping; single runs here
differ by more than most changes are worth.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys, tempfile
from pathlib import Path
root, sync, folder = sys.argv[1], sys.argv[3], sys.argv[5]
n, concurrency = int(sys.argv[2]), int(sys.argv[4])
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f)]
sys.path[:0] = [root, root + "/benchmarks"]
import anyio
import vpsweb_tasks
assert vpsweb_tasks.__file__.startswith(root), vpsweb_tasks.__file__
import throughput
clock = throughput.ThreadClock()
with tempfile.TemporaryDirectory(dir=folder, prefix="ab-") as tmp:
    run = anyio.run(throughput.ours, Path(tmp) / "ab.db", n, concurrency, sync, clock)
threads = clock.spent()
loop = threads.get("MainThread", 0.0)
db = sum(seconds for name, seconds in threads.items() if name.startswith("vpsweb-tasks-sqlite"))
print(json.dumps({"rate": run.rate, "cpu": run.cpu, "loop": loop / n, "db": db / n}))
"""


def checkout(spec: str, keep: list[Path]) -> Path:
    path = Path(spec)
    if path.is_dir():
        return path.resolve()
    folder = Path(tempfile.mkdtemp(prefix="vpsweb-ab-"))
    target = folder / "tree"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(target), spec],
        check=True,
    )
    keep.append(target)
    return target


def run_once(root: Path, args: argparse.Namespace) -> dict[str, float]:
    command = [
        sys.executable,
        "-c",
        CHILD,
        str(root),
        str(args.tasks),
        args.synchronous,
        str(args.concurrency),
        args.dir,
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="+", help="git revisions or checkout paths")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--pairs", type=int, default=5, help="runs of each checkout")
    parser.add_argument("--synchronous", default="NORMAL", choices=["NORMAL", "FULL"])
    parser.add_argument("--concurrency", type=int, default=32, help="max_concurrent_jobs")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="for the databases")
    args = parser.parse_args()

    made: list[Path] = []
    try:
        roots = [checkout(spec, made) for spec in args.checkouts]
        runs: dict[str, list[dict[str, float]]] = {spec: [] for spec in args.checkouts}
        for i in range(args.pairs):
            for spec, root in zip(args.checkouts, roots, strict=True):
                result = run_once(root, args)
                runs[spec].append(result)
                print(
                    f"  run {i + 1} {spec:<20} {result['rate']:>8,.0f} tasks/s"
                    f"  loop {result['loop'] * 1e6:5.0f} us  db {result['db'] * 1e6:5.0f} us",
                    flush=True,
                )
    finally:
        for tree in made:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False
            )

    print(
        f"\n{args.tasks:,} no-op tasks a run, {args.pairs} runs each, interleaved;"
        f" synchronous={args.synchronous}, max_concurrent_jobs={args.concurrency};"
        f" {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    header = (
        f"{'checkout':<20} {'tasks/s':>9} {'[min-max]':>17}"
        f" {'CPU us':>7} {'loop us':>8} {'db us':>6}"
    )
    print(header)
    print("-" * len(header))
    for spec in args.checkouts:
        rates = [r["rate"] for r in runs[spec]]
        median = {key: statistics.median(r[key] for r in runs[spec]) for key in runs[spec][0]}
        print(
            f"{spec:<20} {median['rate']:>9,.0f} {f'[{min(rates):,.0f}-{max(rates):,.0f}]':>17}"
            f" {median['cpu'] * 1e6:>7.0f} {median['loop'] * 1e6:>8.0f} {median['db'] * 1e6:>6.0f}"
        )


if __name__ == "__main__":
    main()
