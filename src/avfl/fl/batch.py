"""Batched runs: several runs of one method train in one process, their rounds in lockstep.

Each run's method code runs unchanged in its own thread: `ctx.run(phase)` hands the phase to
the coordinator and waits. When every live run is waiting (or finished), the coordinator
advances all waiting phases together with `engine.run_phases`, which trains the clients of
all runs in shared lockstep steps, and hands each run its result. Only the coordinator
computes; a run's numbers do not depend on the batch it is in (see fl/local.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from avfl.fl.engine import PhaseRequest, run_phases
from avfl.fl.types import PhaseResult


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class Coordinator:
    """Collects the phases that runs ask for and executes them together."""

    def __init__(self, n: int):
        self._cv = threading.Condition()
        self._live = n
        self._pending: dict[int, PhaseRequest] = {}
        self._results: dict[int, PhaseResult | _Failed] = {}

    def submit(self, run_id: int, request: PhaseRequest) -> PhaseResult:
        """Called from a run's thread: blocks until the phase has been run."""
        with self._cv:
            self._pending[run_id] = request
            self._cv.notify_all()
            self._cv.wait_for(lambda: run_id in self._results)
            outcome = self._results.pop(run_id)
        if isinstance(outcome, _Failed):
            raise outcome.error
        return outcome

    def _finish(self) -> None:
        with self._cv:
            self._live -= 1
            self._cv.notify_all()

    def serve(self) -> None:
        """The main thread's loop: run whatever all live runs wait for, until none is left."""
        while True:
            with self._cv:
                self._cv.wait_for(lambda: len(self._pending) == self._live)
                if self._live == 0:
                    return
                batch, self._pending = self._pending, {}
            ids = sorted(batch)
            try:
                outcomes: list[PhaseResult | _Failed] = list(run_phases([batch[i] for i in ids]))
            except Exception as exc:  # one run's phase cannot start, or training broke
                outcomes = _one_by_one([batch[i] for i in ids], exc)
            with self._cv:
                self._results.update(zip(ids, outcomes, strict=True))
                self._cv.notify_all()


def _one_by_one(requests: Sequence[PhaseRequest], error: Exception) -> list[PhaseResult | _Failed]:
    """After a failed batch step, run each phase alone so that only the faulty runs fail."""
    if len(requests) == 1:
        return [_Failed(error)]
    outcomes: list[PhaseResult | _Failed] = []
    for request in requests:
        try:
            outcomes.append(run_phases([request])[0])
        except Exception as exc:
            outcomes.append(_Failed(exc))
    return outcomes


def run_batch(jobs: Sequence[Callable[[Callable[[PhaseRequest], PhaseResult]], Any]]) -> list[Any]:
    """Run `jobs[i](runner)` for every i, where `runner(phase_run)` executes a phase.

    Returns each job's return value, or the exception it raised (a failed run does not stop
    the others; the caller decides what a failure means).
    """
    if len(jobs) == 1:
        try:
            return [jobs[0](lambda request: run_phases([request])[0])]
        except Exception as exc:
            return [exc]
    coordinator = Coordinator(len(jobs))
    outcomes: list[Any] = [None] * len(jobs)

    def work(i: int) -> None:
        try:
            outcomes[i] = jobs[i](lambda request: coordinator.submit(i, request))
        except BaseException as exc:
            outcomes[i] = exc
        finally:
            coordinator._finish()

    threads = [
        threading.Thread(target=work, args=(i,), name=f"run-{i}", daemon=True)
        for i in range(len(jobs))
    ]
    for thread in threads:
        thread.start()
    coordinator.serve()
    for thread in threads:
        thread.join()
    return outcomes
