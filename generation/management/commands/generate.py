import logging
import time
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from chat.models import Conversation
from chat.services import conversation_create
from generation import selectors
from generation.models import ImageJob
from generation.request import UPSCALE
from generation.services import JobRefused, job_submit
from generation.templatetags.jobs import duration
from generation.uploads import WHITE, mask_from, read_image

CONVERSATION_TITLE = "Command line"


class Command(BaseCommand):
    help = (
        "Queue an image through the same services as the chat page. With --wait, follow it "
        "with a progress bar until it is done and print the image's path."
    )

    def add_arguments(self, parser):
        parser.add_argument("prompt", help="What the image should show.")
        parser.add_argument("--negative-prompt", default="", help="What it should not show.")
        parser.add_argument("--model", help="A registered model (default: IMAGEGEN_DEFAULT_MODEL).")
        parser.add_argument("--steps", type=int, help="Sampling steps, 1-100 (default: the model family's).")
        parser.add_argument("--size", help="WIDTHxHEIGHT, multiples of 8 or 16 (default: the model family's).")
        parser.add_argument("--seed", type=int, help="0 to 2**32-1 (default: random).")
        parser.add_argument("--guidance", type=float, help="Guidance scale, 0-30 (default: the model family's).")
        parser.add_argument("--count", type=int, help="How many images of the prompt, 1-10 (default 1).")
        parser.add_argument(
            "--user", help="Whose job it is (default: the only superuser). It goes to their 'Command line' chat."
        )
        parser.add_argument("--image", help="Start from this PNG, JPEG or WebP file (an edit of it).")
        parser.add_argument(
            "--mask", help="With --image: repaint only where this mask is white (black: keep), same size."
        )
        parser.add_argument(
            "--strength", type=float, help="With --image: how far from it to go, 0.05-1 (default 0.6; 0.75 inpainting)."
        )
        parser.add_argument(
            "--upscale", action="store_true", help="With --image: twice its size, refined by the model."
        )
        parser.add_argument("--wait", action="store_true", help="Follow the job until it is done.")
        parser.add_argument(
            "--pickup-timeout",
            type=float,
            default=60.0,
            help="With --wait: give up if no worker starts the job within this many seconds (default 60).",
        )

    def handle(self, *args, **options):
        # django-q logs every enqueued task at INFO; here it would break the progress line.
        logging.getLogger("django-q").setLevel(logging.WARNING)
        user = self._user(options["user"])
        params = {"negative_prompt": options["negative_prompt"]}
        for key in ("model", "steps", "seed", "guidance", "count"):
            if options[key] is not None:
                params[key] = options[key]
        if options["size"]:
            width, sep, height = options["size"].lower().partition("x")
            if not sep or not width.isdigit() or not height.isdigit():
                raise CommandError(f"--size must look like 512x512, got {options['size']!r}")
            params.update(width=int(width), height=int(height))
        params.update(self._edit(options))
        conversation = Conversation.objects.filter(owner=user, title=CONVERSATION_TITLE).first()
        conversation = conversation or conversation_create(owner=user, title=CONVERSATION_TITLE)
        try:
            jobs = job_submit(user=user, conversation=conversation, prompt=options["prompt"], **params).jobs
        except ValidationError as exc:
            problems = [f"{field}: {' '.join(errors)}" for field, errors in getattr(exc, "message_dict", {}).items()]
            raise CommandError("; ".join(problems) or " ".join(exc.messages)) from None
        except JobRefused as exc:
            raise CommandError(str(exc)) from None
        job = jobs[0]
        if len(jobs) == 1:
            self.stdout.write(f"Queued job {job.pk} for {user} (seed {job.seed}).")
        else:
            ids = ", ".join(str(each.pk) for each in jobs)
            self.stdout.write(f"Queued jobs {ids} for {user} (seeds {jobs[0].seed}-{jobs[-1].seed}).")
        if options["wait"]:
            self._follow(jobs, pickup_timeout=options["pickup_timeout"])

    def _edit(self, options) -> dict:
        """--image, --mask, --strength and --upscale as the services take them."""
        if not options["image"]:
            if options["mask"] or options["strength"] is not None or options["upscale"]:
                raise CommandError("--mask, --strength and --upscale need --image.")
            return {}
        try:
            source = read_image(Path(options["image"]).read_bytes(), label="--image")
            edit = {"source": source}
            if options["mask"]:
                mask = read_image(Path(options["mask"]).read_bytes(), label="--mask")
                edit["mask"] = mask_from(mask, size=source.size, marks=WHITE, label="--mask")
        except OSError as exc:
            raise CommandError(f"Cannot read {exc.filename}: {exc.strerror}") from None
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        if options["strength"] is not None:
            edit["strength"] = options["strength"]
        if options["upscale"]:
            edit["kind"] = UPSCALE
        return edit

    def _user(self, username):
        users = get_user_model().objects
        if username:
            try:
                return users.get(username=username)
            except users.model.DoesNotExist:
                raise CommandError(f"No user named {username!r}.") from None
        superusers = list(users.filter(is_superuser=True)[:2])
        if len(superusers) != 1:
            raise CommandError("Say whose job it is with --user USERNAME.")
        return superusers[0]

    def _queued_line(self, job) -> str:
        state = selectors.job_live_states(jobs=[job]).get(job.pk, {})
        if state.get("position") is None:
            return "Queued"
        line = f"Queued: position {state['position']}"
        if state.get("estimated_start_seconds") is not None:
            line += f", starts in {duration(state['estimated_start_seconds'])}"
        return line

    def _follow(self, jobs, *, pickup_timeout: float) -> None:
        """A progress bar over all the prompt's images until each has ended; their paths then."""
        queued_since = time.monotonic()
        last = None
        checked, queued_line = 0.0, ""
        pks = [job.pk for job in jobs]
        while True:
            jobs = sorted(ImageJob.objects.filter(pk__in=pks), key=lambda job: job.image_index)
            pending = [job for job in jobs if job.is_pending]
            if not pending:
                break
            if all(job.status == ImageJob.Status.QUEUED for job in pending):
                if time.monotonic() - queued_since > pickup_timeout:
                    self.stdout.write("")
                    raise CommandError(
                        f"No worker started job {pending[0].pk} within {pickup_timeout:g} s; it stays queued. "
                        "Is the gpu cluster running (make run)?"
                    )
                if time.monotonic() - checked >= 1:
                    # The position reads the whole queue: once a second is plenty.
                    checked = time.monotonic()
                    queued_line = self._queued_line(pending[0])
                line = queued_line
            else:
                queued_since = time.monotonic()
                progress = sum(job.progress if job.is_pending else 100 for job in jobs) // len(jobs)
                filled = progress * 30 // 100
                line = f"[{'#' * filled}{'.' * (30 - filled)}] {progress:3d}%"
                if len(jobs) > 1:
                    line += f" ({len(jobs) - len(pending)} of {len(jobs)} done)"
            if line != last:
                # Padded, so a shorter line wipes out the end of a longer one.
                self.stdout.write(f"\r{line:<60}", ending="")
                self.stdout.flush()
                last = line
            time.sleep(0.25)
        self.stdout.write("")
        for job in jobs:
            if job.status == ImageJob.Status.COMPLETE:
                self.stdout.write(self.style.SUCCESS(job.image.path))
        failed = [job for job in jobs if job.status != ImageJob.Status.COMPLETE]
        if not failed:
            return
        if len(jobs) == 1:
            job = failed[0]
            if job.status == ImageJob.Status.ERROR:
                raise CommandError(f"Job {job.pk} failed: {job.error}")
            raise CommandError(f"Job {job.pk} was {job.status}.")
        reasons = "; ".join(f"job {job.pk} {job.error or 'was ' + job.status}" for job in failed)
        raise CommandError(f"{len(failed)} of {len(jobs)} images were not made: {reasons}")
