"""`vpsweb-tasks serve` as a newcomer runs it: a real process, real HTTP, SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

#: What uvicorn says once its socket listens ("Application startup complete" comes before
#: it binds the port: a request sent then is refused).
LISTENING = "Uvicorn running on"


@dataclass
class Served:
    """A server process and what it has said on stderr so far (a thread reads it, so the
    pipe never fills)."""

    process: subprocess.Popen[str]
    said: list[str] = field(default_factory=list)
    listening: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.said.append(line)
            if LISTENING in line:
                self.listening.set()
        self.listening.set()  # it exited: launch() looks at why

    def stop(self, sig: int = signal.SIGTERM) -> str:
        """``sig``, then everything it said."""
        self.process.send_signal(sig)
        self.process.wait(timeout=30)
        self.reader.join(timeout=30)
        assert self.process.stderr is not None
        self.process.stderr.close()
        return "".join(self.said)

    def wait_listening(self, deadline: float) -> None:
        self.listening.wait(deadline)
        if not any(LISTENING in line for line in self.said):
            pytest.fail("the server did not start listening:\n" + self.stop(signal.SIGKILL))


def launch(
    args: list[str], cwd: Path, pythonpath: str | None = None, deadline: float = 60.0
) -> Served:
    """``python ARGS`` in ``cwd`` with none of our environment variables (``pythonpath``
    put first on the path), once uvicorn says its socket listens; fails with what it said
    if it exits first or is still not listening after ``deadline`` seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VPSWEB_TASKS_")}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, *args], cwd=cwd, env=env, stderr=subprocess.PIPE, text=True
    )
    served = Served(process)
    served.wait_listening(deadline)
    return served


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Says what uvicorn says, in its order, with the gap between the two lines made wide.
SLOW_TO_BIND = """
import socket, sys, time
print("INFO:     Application startup complete.", file=sys.stderr, flush=True)
time.sleep(1.0)
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("INFO:     Uvicorn running on http://127.0.0.1:" + sys.argv[1], file=sys.stderr, flush=True)
listener.accept()
"""


def test_launch_returns_once_the_port_accepts(tmp_path: Path) -> None:
    (tmp_path / "slow_to_bind.py").write_text(SLOW_TO_BIND)
    port = free_port()
    server = launch(["slow_to_bind.py", str(port)], tmp_path)
    try:
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    finally:
        server.stop()


#: What `.[dev]` adds to `.[http]` (the README's run command installs `.[http]` only) and
#: the PostgreSQL driver: serving on the SQLite default must import none of them.
NOT_IN_THE_HTTP_EXTRA = ("pytest", "hypothesis", "mypy", "schemathesis", "playwright", "psycopg")

BLOCK_IMPORTS = f"""
import sys

class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {NOT_IN_THE_HTTP_EXTRA!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the http extra)")
        return None

sys.meta_path.insert(0, _NotInstalled())
"""


def test_serve_runs_the_api_and_workers_on_the_sqlite_default(tmp_path: Path) -> None:
    """As the README's run command leaves it: only the `http` extra installed (the test
    hides the `dev` extra's packages and psycopg with an import hook)."""
    port = free_port()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "poems.csv").write_text("title,lines\nOde,14\nHaiku,3\n")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(BLOCK_IMPORTS)
    server = launch(["-m", "vpsweb_tasks.cli", "serve", "--port", str(port)], tmp_path, str(hook))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            submitted = client.post(
                "/api/v1/background-tasks/submit",
                json={
                    "task_name": "Convert poems",
                    "task_type": "data_processing",
                    "metadata": {"source_file": "poems.csv", "output_format": "jsonl"},
                },
            )
            assert submitted.status_code == 202
            task_id = submitted.json()["task_id"]
            with client.stream("GET", f"/api/v1/background-tasks/tasks/{task_id}/events") as events:
                for line in events.iter_lines():  # ends when the task does
                    if line.startswith("event: task_dead_lettered"):
                        break
            status = client.get(f"/api/v1/background-tasks/status/{task_id}").json()
        assert status["status"] == "completed", status
        assert status["result"]["rows"] == 2
        assert (tmp_path / "data" / "output" / "poems.jsonl").read_text().count("\n") == 2
        assert (tmp_path / "vpsweb_tasks.db").exists()  # the embedded SQLite default
        assert f"task_id:{task_id}" in (tmp_path / "logs" / "repository.log").read_text()
    finally:
        said = server.stop()
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert "Application shutdown complete" in said
    assert server.process.returncode in (0, -signal.SIGTERM)


def test_serve_installs_an_extension_named_on_the_command_line(tmp_path: Path) -> None:
    """`serve --extension wordcount:WordCount` (examples/wordcount on the path): its
    routes answer next to the core's and translation's, over real HTTP."""
    examples = Path(__file__).resolve().parent.parent / "examples"
    port = free_port()
    serve = ["-m", "vpsweb_tasks.cli", "serve", "--port", str(port)]
    server = launch([*serve, "--extension", "wordcount:WordCount"], tmp_path, str(examples))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            accepted = client.post("/api/v1/wordcount", json={"text": "four words in here"})
            assert accepted.status_code == 202, accepted.text
            task_id = accepted.json()["task_id"]
            with client.stream("GET", f"/api/v1/background-tasks/tasks/{task_id}/events") as events:
                for line in events.iter_lines():  # ends when the task does
                    if line.startswith("event: task_dead_lettered"):
                        break
            assert client.get(f"/api/v1/wordcount/{task_id}").json() == {
                "task_id": task_id,
                "words": 4,
            }
            assert client.post("/api/v1/wordcount", json={"text": ""}).status_code == 422
            # translation is still installed by default, beside the named extension
            paths = client.get("/openapi.json").json()["paths"]
            assert "/api/v1/background-tasks/translation" in paths, sorted(paths)
    finally:
        server.stop()
    assert server.process.returncode in (0, -signal.SIGTERM)


def readme_python_block(after: str) -> str:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    return text.split(after, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readmes_fastapi_snippet_runs_as_pasted(tmp_path: Path) -> None:
    """Pasted into a file in an empty folder (no config.yaml) and served by uvicorn."""
    (tmp_path / "myapp.py").write_text(readme_python_block("Mount it into an existing FastAPI"))
    port = free_port()
    server = launch(["-m", "uvicorn", "myapp:app", "--port", str(port)], tmp_path)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            accepted = client.post(
                "/api/v1/background-tasks/submit",
                json={"task_name": "tidy", "task_type": "maintenance"},
            )
            assert accepted.status_code == 202, accepted.text
            task_id = accepted.json()["task_id"]
            with client.stream("GET", f"/api/v1/background-tasks/tasks/{task_id}/events") as events:
                for _ in events.iter_lines():  # ends when the task does
                    pass
            status = client.get(f"/api/v1/background-tasks/status/{task_id}").json()
            assert status["status"] == "completed", status
            vpsweb = client.get("/api/v1/background-tasks/vpsweb/status")
            assert vpsweb.status_code == 200, vpsweb.text
            assert vpsweb.json()["workflow"] == "builtin"
    finally:
        server.stop()
