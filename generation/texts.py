"""Everything a person reads about a job: the assistant's replies, errors, refusals, notices.

One module, so the wording stays consistent and is changed (or translated) in one place.
"""

# The assistant message's content in each state.
QUEUED = "Your image is queued."
RUNNING = "Making your image…"
RETRYING = "A temporary problem; trying again shortly…"
WORKER_RESTARTED = "The worker restarted; your image will be made again shortly…"
HANDED_BACK = "Waiting for a worker; your image keeps its place in the queue."
READY = "Your image is ready."
CANCELLED = "No image was made."  # under the card's "Cancelled" chip
FAILED = "Sorry, the image could not be made."


def interrupted(step: int, steps: int) -> str:
    """An image stopped early (A1111's interrupt): it is the one of the step it reached."""
    return f"Stopped at step {step} of {steps}: your image as it was then."


def prompt_content(status: str, count: int, ready: int, said: str | None = None) -> str:
    """The content of the reply to a prompt of `count` images, `ready` of them made.

    For one image it is what its last change `said` (or the status's own sentence);
    for several, how many are ready.
    """
    if count == 1:
        return said or {"queued": QUEUED, "processing": RUNNING, "complete": READY, "error": FAILED}.get(
            status, CANCELLED
        )
    if status == "queued":
        return f"Your {count} images are queued."
    if status == "processing":
        return f"Making your {count} images… {ready} of {count} ready."
    if status == "complete":
        return f"Your {count} images are ready." if ready == count else f"{ready} of {count} images are ready."
    if status == "error":
        return "Sorry, the images could not be made."
    return f"{ready} of {count} images were made." if ready else "No images were made."


# A failed job's error.
FAILED_ERROR = "Image generation failed because of a problem on the server. Please try again."
TRANSIENT_ERROR = "The image generator is temporarily unavailable. Please try again in a few minutes."
ADMIN_STOPPED = "This image was stopped by an administrator."
STUCK = "Generation timed out (stuck job guard)"
WORKER_LOST = "Image generation stopped unexpectedly. Please try again."
MODEL_UNAVAILABLE = (
    "This model is not available on the server yet. An administrator has been told how to fix it; "
    "please try another model meanwhile."
)

# A processing job's card, before its first step.
STARTING = "Starting… the model may be loading, which can take a moment."
DOWNLOADING = "Downloading model… the first image with a new model waits for its download."
LOADING = "Loading model… the first image after a change of model, or a quiet spell, waits for it."


def timed_out(seconds: int) -> str:
    return f"Image generation timed out after {seconds} s. Please try again."


# Refusals.
def pending_cap(pending: int) -> str:
    return f"You already have {pending} images waiting. Please wait for one to finish before asking for more."


def too_many_asked(pending: int, asked: int, limit: int) -> str:
    if not pending:
        return f"At most {limit} images can wait for you at once. Please ask for fewer."
    return (
        f"You already have {pending} images waiting; {asked} more would pass your limit of {limit}. "
        "Please ask for fewer, or wait for some to finish."
    )


TOO_FAST = "You are sending prompts too quickly. Please wait a minute and try again."
DISK_FULL = (
    "The server's disk is full, so no new image could be stored. Your prompt was not queued; please try again later."
)


def cannot_cancel(status: str) -> str:
    return f"This job is already {status} and cannot be cancelled."


def cannot_retry(status: str) -> str:
    return f"Only failed or cancelled jobs can be retried; this one is {status}."


ONLY_QUEUED_MOVES = "Only queued jobs can be moved to the end of the queue."
ONLY_QUEUED_RUNS_NEXT = "Only queued jobs can be run next."
ONLY_PENDING_FAILS = "Only queued or processing jobs can be marked as error."
NOT_YOURS = "Not your conversation."

# The notice every page shows, by circuit-breaker state.
SERVICE_NOTICES = {
    "closed": "",
    "open": "Image generation is paused after repeated failures. Your requests are kept and will run when it recovers.",
    "half_open": "Image generation is recovering: trying one image before resuming the queue.",
}


# --- Edits ------------------------------------------------------------------------------

SOURCE_NOT_FOUND = "Source: no finished image of yours has that number."
EDIT_NEEDS_SOURCE = "Image: an edit needs an image to start from."
EDIT_KIND_NEEDED = "Kind: an image was given, so choose an edit (img2img, inpaint or upscale)."
INPAINT_NEEDS_MASK = "Mask: paint the area to change first."


def mask_size(width: int, height: int) -> str:
    return f"Mask: must be the same size as the image ({width}x{height})."


def upscale_too_large(width: int, height: int) -> str:
    return f"Upscale: this image ({width}x{height}) is already as large as this model makes images."


def images_ahead(position: int | None) -> str:
    """What a queued card says of the jobs before it (the queue is everyone's)."""
    if not position:
        return ""
    if position == 1:
        return "Next in the shared queue."
    ahead = position - 1
    return f"{ahead} image{'s' if ahead != 1 else ''} ahead of yours in the shared queue."
