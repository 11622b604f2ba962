"""A generator for the stack tests that fails, hangs or runs slowly when the prompt asks it to.

Chosen with IMAGEGEN_GENERATOR=tests.faults.FaultyGenerator by the browser and API tests'
stack, so the real failure paths (an error, a stuck job, an open circuit breaker) can be
driven from a page. The production worker knows nothing of it.
"""

import time

from generation.models import ImageJob
from generation.pipeline import DiffusersGenerator
from generation.request import GenerationCancelled

HANG_LIMIT = 120  # seconds a "[hang]" job stays silent at most
SLOW_STEP_SECONDS = 0.4  # each step of a "[slow]" job takes at least this long


class FaultyGenerator(DiffusersGenerator):
    def generate_batch(self, requests, on_step=None):
        prompts = " ".join(request.prompt for request in requests)
        if "[fail]" in prompts:
            raise RuntimeError("Injected failure (test double)")
        if "[hang]" in prompts:
            # No step, so no heartbeat, until something else (the guard, a cancel) ends the job.
            deadline = time.monotonic() + HANG_LIMIT
            while time.monotonic() < deadline and any(_processing(request.prompt) for request in requests):
                time.sleep(0.5)
            raise GenerationCancelled()
        if "[slow]" in prompts and on_step is not None:
            # Long enough to watch its progress and previews, and to interrupt it.
            inner = on_step

            def on_step(step, total, latents):
                time.sleep(SLOW_STEP_SECONDS)
                return inner(step, total, latents)

        return super().generate_batch(requests, on_step)


def _processing(prompt: str) -> bool:
    return ImageJob.objects.filter(prompt=prompt, status=ImageJob.Status.PROCESSING).exists()
