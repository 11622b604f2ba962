"""A generator that costs nothing: the worker's own cost per job, measured alone.

Used only by the benchmarks (`IMAGEGEN_GENERATOR=bench.zero_cost.ZeroCostGenerator`).
It calls the step callback once per step, as the pipeline does, and returns a fixed
picture of the requested size at once (a smooth gradient with grain, which a PNG
encoder finds about as hard as a photo), so every progress write, event, PNG
encoding and completion of a real job still happens. With IMAGEGEN_BENCH_GPU_MS it
sleeps that long per image, spread over the steps, like a device that is busy but
leaves the CPU free. Each call appends "start end" (epoch seconds) to the file named
by IMAGEGEN_BENCH_TIMINGS. It takes the name IMAGEGEN_DEVICE gives it (default
"cpu"), so several workers can stand for several GPUs.
"""

import os
import time

import numpy as np
from PIL import Image


def picture(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 1, width)[None, :]
    y = np.linspace(0, 1, height)[:, None]
    rgb = np.stack([x * y, (1 - x) * y + 0 * x, x * (1 - y)], axis=-1) * 255
    grain = np.random.default_rng(0).normal(0, 6, (height, width, 3))
    return Image.fromarray((rgb + grain).clip(0, 255).astype(np.uint8), mode="RGB")


class ZeroCostGenerator:
    def __init__(self, registry=None, *, cache_dir=None, device="auto", max_batch=0):
        import torch

        # Named like the device it stands for (IMAGEGEN_DEVICE), whose lock it takes.
        self.device = "cpu" if device == "auto" else device

        self._torch = torch
        self._pictures: dict[tuple[int, int], Image.Image] = {}
        self._latents: dict[tuple[int, int], object] = {}
        self.gpu_seconds = float(os.environ.get("IMAGEGEN_BENCH_GPU_MS", "0")) / 1000
        path = os.environ.get("IMAGEGEN_BENCH_TIMINGS")
        self._timings = open(path, "a") if path else None  # noqa: SIM115 - lives with the worker

    def load(self, name):
        return None

    def needs_download(self, name):
        return False

    def generate_batch(self, requests, on_step=None):
        request = requests[0]
        size = (request.width, request.height)
        if size not in self._pictures:
            self._pictures[size] = picture(*size)
            self._latents[size] = self._torch.zeros(1, 4, request.height // 8, request.width // 8)
        started = time.time()
        for step in range(1, request.steps + 1):
            if self.gpu_seconds:
                time.sleep(self.gpu_seconds / request.steps)
            if on_step is not None:
                on_step(step, request.steps, self._latents[size].expand(len(requests), -1, -1, -1))
        ended = time.time()
        if self._timings is not None:
            self._timings.write(f"{started} {ended}\n")
            self._timings.flush()
        return [self._pictures[size].copy() for _ in requests]
