"""One progress line per phase of a long job: what it is doing now and about how long is left.

A job made of phases (the self-reward loop: prompts, candidates, judge, train, eval per round)
is not one tqdm bar; this names the phase, its place in the job and an estimate of the time left
from the phases done so far: a phase's estimate is the mean duration of the phases of the same
name already run (else the mean of all), so a resumed job, whose finished phases take no time,
still estimates from what it really ran.

    >>> clock = PhaseClock("self-reward", ["round 1 candidates", "round 1 train"], say=print, now=iter([0, 0, 60, 60]).__next__)
    >>> clock.start("round 1 candidates")
    [self-reward] phase 1/2: round 1 candidates (elapsed 0s, time left unknown)
    >>> clock.start("round 1 train")
    [self-reward] phase 2/2: round 1 train (elapsed 1m00s, about 1m00s left)
"""

from __future__ import annotations

import time
from typing import Callable

MIN_COUNTED_S = 1.0  # a phase shorter than this was skipped (resumed), not run: it does not count in estimates


def format_duration(seconds: float) -> str:
    """'42s', '3m05s', '1h02m'."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _kind(phase: str) -> str:
    """A phase's kind: its last word ('round 2 candidates' -> 'candidates')."""
    return phase.split()[-1] if phase.split() else phase


class PhaseClock:
    def __init__(self, job: str, phases: list[str], say: Callable[[str], None] = print, now: Callable[[], float] = time.perf_counter):
        self.job, self.phases, self.say, self.now = job, list(phases), say, now
        self.t0 = now()
        self.current: tuple[str, float] | None = None
        self.durations: dict[str, list[float]] = {}

    def _finish_current(self, t: float) -> None:
        if self.current is not None:
            name, started = self.current
            if t - started >= MIN_COUNTED_S:
                self.durations.setdefault(_kind(name), []).append(t - started)
            self.current = None

    def left(self, phase: str) -> float | None:
        """Estimated seconds for `phase` and every phase after it; None before any phase has run."""
        every = [d for ds in self.durations.values() for d in ds]
        if not every:
            return None
        mean_all = sum(every) / len(every)
        rest = self.phases[self.phases.index(phase):] if phase in self.phases else [phase]
        return sum(sum(ds) / len(ds) if (ds := self.durations.get(_kind(p))) else mean_all for p in rest)

    def start(self, phase: str) -> None:
        """Close the previous phase and print the line for this one."""
        t = self.now()
        self._finish_current(t)
        self.current = (phase, t)
        n = self.phases.index(phase) + 1 if phase in self.phases else len(self.phases)
        left = self.left(phase)
        eta = "time left unknown" if left is None else f"about {format_duration(left)} left"
        self.say(f"[{self.job}] phase {n}/{len(self.phases)}: {phase} (elapsed {format_duration(t - self.t0)}, {eta})")

    def done(self) -> None:
        t = self.now()
        self._finish_current(t)
        self.say(f"[{self.job}] done in {format_duration(t - self.t0)}")
