"""Stand-ins for time and for the diffusers pipeline."""

from datetime import UTC, datetime, timedelta

import torch
from PIL import Image


class FakeClock:
    """Monotonic clock, wall clock and sleep that move together, on demand."""

    def __init__(self):
        self.t = 1000.0
        self.wall = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.t

    def now(self) -> datetime:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self.wall += timedelta(seconds=seconds)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)


class FakeGenerator:
    """Stands in for the diffusers pipeline where the demo model is too slow or a fault is needed.

    It implements `generation.request.ImageGenerator`, batching included: a pass of n
    requests runs its steps once, with latents of n rows, and returns n images.
    `failures` are raised by the next passes, one each; `on_each_step` runs inside
    every step (to move a clock, or to act like a user mid-job); `passes` records the
    size of every pass. The rows `on_step` stops stop there, and the pass ends when
    all have: the image of a row stopped at step k is grey (k, k, k).
    """

    device = "cpu"

    def __init__(self, failures=(), on_each_step=None):
        self.failures = list(failures)
        self.on_each_step = on_each_step
        self.prompts: list[str] = []
        self.passes: list[int] = []

    def load(self, name):
        return None

    def needs_download(self, name):
        return False

    def generate_batch(self, requests, on_step=None):
        self.prompts.extend(request.prompt for request in requests)
        self.passes.append(len(requests))
        if self.failures:
            raise self.failures.pop(0)
        first = requests[0]
        latents = torch.zeros(len(requests), 4, first.height // 8, first.width // 8)
        stopped: dict[int, int] = {}  # row -> the step it stopped at
        for step in range(1, first.steps + 1):
            if self.on_each_step:
                self.on_each_step(step)
            if on_step:
                for row in on_step(step, first.steps, latents) or ():
                    stopped.setdefault(row, step)
            if len(stopped) == len(requests):
                break
        return [
            Image.new("RGB", (request.width, request.height), (stopped[row],) * 3 if row in stopped else (10, 20, 30))
            for row, request in enumerate(requests)
        ]
