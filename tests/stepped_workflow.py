"""An injected translation workflow (VPSWeb's duck-typed interface) whose steps the test
releases one at a time, so what a job shows at each moment is known without sleeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio

from vpsweb_tasks.translation import STEP_NAMES, STEPS, TranslationInput


class StepFailed(RuntimeError):
    """Raised by a step told to fail."""


@dataclass
class Gates:
    """One job's steps: ``reached[i]`` is set once step i reported running; the step
    finishes (or raises, at ``fail_at``) once the test sets ``release[i]``."""

    reached: list[anyio.Event] = field(default_factory=lambda: [anyio.Event() for _ in STEPS])
    release: list[anyio.Event] = field(default_factory=lambda: [anyio.Event() for _ in STEPS])
    fail_at: int | None = None

    async def step(self, index: int) -> None:
        """Wait until step ``index`` has started."""
        with anyio.fail_after(10):
            await self.reached[index].wait()


class SteppedWorkflow:
    """Reports each step as VPSWeb's workflow does (its step names, ``status`` running
    then completed) and waits for the test between the two."""

    def __init__(self, input: TranslationInput, gates: Gates) -> None:
        self.input = input
        self.gates = gates
        self.progress_callback: Any = None
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    async def execute(self, input: TranslationInput) -> dict[str, Any]:
        for index, step in enumerate(STEPS):
            name = STEP_NAMES[step]
            await self.progress_callback(name, {"status": "running"})
            self.gates.reached[index].set()
            await self.gates.release[index].wait()
            if self.gates.fail_at == index:
                raise StepFailed(f"{name} failed")
            await self.progress_callback(name, {"status": "completed", "tokens_used": 1})
        return {"revised_translation": f"[{input.target_lang}] {input.original_poem}"}


class Stepper:
    """A workflow factory: job n (in submit order) runs with ``gates[n]``; gates are made
    as needed, so a test may prepare them before the job starts."""

    def __init__(self) -> None:
        self.gates: list[Gates] = []
        self.made = 0

    def job(self, n: int) -> Gates:
        while len(self.gates) <= n:
            self.gates.append(Gates())
        return self.gates[n]

    def __call__(self, input: TranslationInput) -> SteppedWorkflow:
        gates = self.job(self.made)
        self.made += 1
        return SteppedWorkflow(input, gates)
