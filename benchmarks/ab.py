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


#: ``--split``: Huey's topology. This process submits through an API-only manager
#: (``enabled: false``); one ``vpsweb-tasks worker`` process of the same checkout runs the
#: tasks. The clock stops when the database holds N completed tasks (polled every 2 ms, as
#: throughput.py does for Huey). ``loop`` and ``db`` are then the CPU per task of the
#: submitting and the worker process; ``wait`` the share of the run the submitting
#: process's writer waited for the write lock (lockwait.py, from this harness, in both).
CHILD_SPLIT = """
import json, os, signal, subprocess, sys, tempfile, time
from pathlib import Path
root, sync, folder, harness = sys.argv[1], sys.argv[3], sys.argv[5], sys.argv[6]
n, concurrency = int(sys.argv[2]), int(sys.argv[4])
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f)]
sys.path[:0] = [root, root + "/benchmarks", harness]
import anyio, psutil, yaml
import vpsweb_tasks
assert vpsweb_tasks.__file__.startswith(root), vpsweb_tasks.__file__
import lockwait, throughput
from vpsweb_tasks import TaskDefinition, TaskManager, TaskStatus

WORKER = (
    "import sys\\n"
    "root, harness, waits = sys.argv[1], sys.argv[2], sys.argv[3]\\n"
    "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]\\n"
    "sys.path[:0] = [root, harness]\\n"
    "import vpsweb_tasks\\n"
    "assert vpsweb_tasks.__file__.startswith(root), vpsweb_tasks.__file__\\n"
    "import lockwait\\n"
    "lockwait.install(waits)\\n"
    "from vpsweb_tasks.cli.app import main\\n"
    "sys.exit(main(sys.argv[4:]))\\n"
)

def cpu(process):
    times = process.cpu_times()
    return times.user + times.system

async def split(path, waits):
    settings = throughput.settings_for(path, concurrency, sync, n, enabled=False)
    config = path.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    definition = TaskDefinition(name="noop", task_type="noop")
    async with TaskManager(settings) as manager:
        manager.register("noop", throughput.noop)
        command = [sys.executable, "-c", WORKER, root, harness, str(waits), "worker",
                   "--config", str(config), "--import", "benchmarks.noop_tasks",
                   "--loop", "asyncio"]
        worker = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True)
        try:
            line = await anyio.to_thread.run_sync(worker.stdout.readline)
            assert line.startswith("READY"), line
            await (await manager.submit(definition)).wait()
            child = psutil.Process(worker.pid)
            mine, theirs = time.process_time(), cpu(child)
            lockwait.spent.update(wait=0.0, begins=0)
            start = time.perf_counter()
            await throughput.submit_all(manager, definition, n)
            while (await manager.store.count_tasks())[TaskStatus.COMPLETED] <= n:
                await anyio.sleep(0.002)
            elapsed = time.perf_counter() - start
            mine, theirs = time.process_time() - mine, cpu(child) - theirs
            submit_wait = dict(lockwait.spent)
        finally:
            worker.send_signal(signal.SIGTERM)
            await anyio.to_thread.run_sync(worker.wait)
            worker.stdout.close()
    return elapsed, mine, theirs, submit_wait

with tempfile.TemporaryDirectory(dir=folder, prefix="ab-") as tmp:
    lockwait.install(str(Path(tmp) / "unused"))
    waits = Path(tmp) / "worker-waits.json"
    elapsed, mine, theirs, submit_wait = anyio.run(split, Path(tmp) / "ab.db", waits)
    worker_wait = json.loads(waits.read_text().splitlines()[-1])
print(json.dumps({"rate": n / elapsed, "cpu": (mine + theirs) / n, "loop": mine / n,
                  "db": theirs / n, "wait": submit_wait["wait"] / elapsed,
                  "tasks/txn": n / (submit_wait["begins"] + worker_wait["begins"])}))
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
        CHILD_SPLIT if args.split else CHILD,
        str(root),
        str(args.tasks),
        args.synchronous,
        str(args.concurrency),
        args.dir,
        str(REPO / "benchmarks"),
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
    parser.add_argument(
        "--split",
        action="store_true",
        help="Huey's topology: submits here, tasks in a `vpsweb-tasks worker` process",
    )
    args = parser.parse_args()

    # In a split run the two CPU columns are the submitting and the worker process, and
    # "wait" the share of the run the submitting process waited for the write lock.
    first, second = ("submit", "worker") if args.split else ("loop", "db")
    made: list[Path] = []
    try:
        roots = [checkout(spec, made) for spec in args.checkouts]
        runs: dict[str, list[dict[str, float]]] = {spec: [] for spec in args.checkouts}
        for i in range(args.pairs):
            for spec, root in zip(args.checkouts, roots, strict=True):
                result = run_once(root, args)
                runs[spec].append(result)
                waited = (
                    f"  wait {result['wait']:4.0%}  {result['tasks/txn']:4.1f} tasks/txn"
                    if args.split
                    else ""
                )
                print(
                    f"  run {i + 1} {spec:<20} {result['rate']:>8,.0f} tasks/s"
                    f"  {first} {result['loop'] * 1e6:5.0f} us"
                    f"  {second} {result['db'] * 1e6:5.0f} us{waited}",
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
        + (" split (a submitting process and a worker process);" if args.split else "")
        + f" {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    header = (
        f"{'checkout':<20} {'tasks/s':>9} {'[min-max]':>17}"
        f" {'CPU us':>7} {first + ' us':>9} {second + ' us':>9}"
        + (f" {'wait':>5}" if args.split else "")
    )
    print(header)
    print("-" * len(header))
    for spec in args.checkouts:
        rates = [r["rate"] for r in runs[spec]]
        median = {key: statistics.median(r[key] for r in runs[spec]) for key in runs[spec][0]}
        print(
            f"{spec:<20} {median['rate']:>9,.0f} {f'[{min(rates):,.0f}-{max(rates):,.0f}]':>17}"
            f" {median['cpu'] * 1e6:>7.0f} {median['loop'] * 1e6:>9.0f} {median['db'] * 1e6:>9.0f}"
            + (f" {median['wait']:>5.0%}" if args.split else "")
        )


if __name__ == "__main__":
    main()
