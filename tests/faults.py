"""A generator for the browser tests that fails or hangs when the prompt asks it to.

Chosen with IMAGEGEN_GENERATOR=tests.faults.FaultyGenerator by the browser tests'
stack, so the real failure paths (an error, a stuck job, an open circuit breaker) can be
driven from a page. The production worker knows nothing of it.
"""

import time

from generation.models import ImageJob
from generation.pipeline import GenerationCancelled, ImageGenerator

HANG_LIMIT = 120  # seconds a "[hang]" job stays silent at most


class FaultyGenerator(ImageGenerator):
    def generate(self, request, on_step=None):
        if "[fail]" in request.prompt:
            raise RuntimeError("Injected failure (test double)")
        if "[hang]" in request.prompt:
            # No step, so no heartbeat, until something else (the guard, a cancel) ends the job.
            deadline = time.monotonic() + HANG_LIMIT
            while time.monotonic() < deadline and _processing(request.prompt):
                time.sleep(0.5)
            raise GenerationCancelled()
        return super().generate(request, on_step)


def _processing(prompt: str) -> bool:
    return ImageJob.objects.filter(prompt=prompt, status=ImageJob.Status.PROCESSING).exists()
