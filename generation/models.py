from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from generation.request import IMG2IMG, INPAINT, TXT2IMG, UPSCALE, GenerationRequest, denoise_steps, parse_loras


class QueueTicket(models.Model):
    """A database-assigned, ever-increasing number that orders the global queue.

    Taking a ticket is an insert, so concurrent submissions on any backend get
    unique numbers without a lock of our own; requeueing a job takes a new one.
    """

    id = models.BigAutoField(primary_key=True)

    def __str__(self) -> str:
        return f"Ticket {self.pk}"


class QueueClock(models.Model):
    """The fair policy's virtual time: the order tag of the latest job the worker took
    in its turn (generation/fairness.py). One row; it only moves forward."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    virtual_time = models.FloatField(default=0)

    def __str__(self) -> str:
        return f"Queue clock at {self.virtual_time:.1f}"


class QueueWeight(models.Model):
    """A user's weight under the fair policy (their share of GPU time is proportional to
    it), and where their turns have got to. A user without a row has weight 1."""

    owner = models.OneToOneField(
        settings.AUTH_USER_MODEL, models.CASCADE, primary_key=True, related_name="queue_weight"
    )
    weight = models.FloatField(
        default=1.0,
        validators=[MinValueValidator(0.1), MaxValueValidator(100)],
        help_text="1 is everyone's default; 2 gets twice the GPU time of a user at 1 when both are waiting.",
    )
    ran_until = models.FloatField(
        default=0,
        editable=False,
        help_text="Fair order: the end of the turn of the user's latest job that ran (virtual GPU time).",
    )

    class Meta:
        verbose_name = "queue weight"

    def __str__(self) -> str:
        return f"Weight {self.weight:g} of user {self.owner_id}"


class QueueBroadcast(models.Model):
    """The one row that coalesces queue broadcasts (see generation.broadcasts).

    `requested_at` is set by the first queue change after a broadcast and cleared by
    the broadcast that serves it; `version` numbers broadcasts, so a page can ignore
    one that arrives after a newer one.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    requested_at = models.DateTimeField(null=True, blank=True)
    version = models.BigIntegerField(default=0)
    sent_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"Queue broadcast {self.version}"


class ImageJob(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        PROCESSING = "processing", "Processing"
        COMPLETE = "complete", "Complete"
        ERROR = "error", "Error"
        CANCELLED = "cancelled", "Cancelled"

    KINDS = [(TXT2IMG, "New image"), (IMG2IMG, "Image to image"), (INPAINT, "Inpaint"), (UPSCALE, "Upscale")]

    PENDING = (Status.QUEUED, Status.PROCESSING)

    # Every change of a job's status, by name: the states it may start from, and the
    # state it leaves the job in. `generation.services._transition` enforces it.
    LIFECYCLE = {
        "claim": ((Status.QUEUED,), Status.PROCESSING),
        "complete": ((Status.PROCESSING,), Status.COMPLETE),
        "fail": ((Status.QUEUED, Status.PROCESSING), Status.ERROR),
        "retry_later": ((Status.PROCESSING,), Status.QUEUED),  # a transient error; same place
        "requeue_lost": ((Status.PROCESSING,), Status.QUEUED),  # its worker died; same place
        "hand_back": ((Status.PROCESSING,), Status.QUEUED),  # its worker is stopping; same place
        "cancel": ((Status.QUEUED, Status.PROCESSING), Status.CANCELLED),
        "retry": ((Status.ERROR, Status.CANCELLED), Status.QUEUED),  # at the back
        "move_to_end": ((Status.QUEUED,), Status.QUEUED),
        "run_next": ((Status.QUEUED,), Status.QUEUED),
    }
    FINAL = (Status.COMPLETE, Status.ERROR, Status.CANCELLED)

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="image_jobs")
    conversation = models.ForeignKey("chat.Conversation", models.CASCADE, related_name="image_jobs")
    # A prompt asking for n images makes n jobs that share one assistant message.
    message = models.ForeignKey("chat.Message", models.CASCADE, related_name="image_jobs")
    image_index = models.PositiveSmallIntegerField(default=0, help_text="Which of its prompt's images (0-based).")
    image_count = models.PositiveSmallIntegerField(default=1, help_text="How many images its prompt asked for.")

    prompt = models.TextField()
    negative_prompt = models.TextField(blank=True)
    model = models.CharField(max_length=100)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    steps = models.PositiveIntegerField()
    guidance = models.FloatField()
    seed = models.BigIntegerField()
    scheduler = models.CharField(max_length=32)
    # A1111's noise schedule for the sampler: automatic (the sampler's own), karras,
    # exponential or sgm_uniform (generation/families.py).
    schedule = models.CharField(max_length=16, default="automatic")
    # The LoRAs applied, as "name:weight" pairs sorted by name and joined by spaces
    # (generation/loras.py), so that jobs with the same set compare equal.
    loras = models.CharField(max_length=600, blank=True, default="")
    kind = models.CharField(max_length=16, choices=KINDS, default=TXT2IMG)
    # AUTOMATIC1111's clip skip (1: the text encoder's last layer; 2: the one before it)
    # and eta noise seed delta (the sampler's noise is seeded with seed + delta).
    clip_skip = models.PositiveSmallIntegerField(default=1, help_text="A1111's clip skip (1: none).")
    noise_seed_delta = models.BigIntegerField(default=0, help_text="A1111's eta noise seed delta (ENSD).")
    strength = models.FloatField(null=True, blank=True, help_text="An edit's denoising strength (0-1).")
    mask_blur = models.PositiveSmallIntegerField(default=4, help_text="An inpainting's soft edge, in pixels.")
    # An edit's own copies of its source image and mask (the mask: white = repaint), so
    # it runs whatever happens to the image it came from.
    source_image = models.FileField(blank=True, max_length=200)
    mask_image = models.FileField(blank=True, max_length=200)
    source_job = models.ForeignKey(
        "self", models.SET_NULL, null=True, blank=True, related_name="edits", help_text="The image it continues from."
    )

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    sequence = models.BigIntegerField(unique=True, help_text="Global FIFO order, from the database.")
    # The fair policy's order (generation/fairness.py): the virtual GPU time at which the
    # job's turn starts, and what it adds to its owner's (estimated seconds / weight).
    fair_tag = models.FloatField(default=0, help_text="Fair order: the virtual GPU time its turn starts at.")
    fair_cost = models.FloatField(default=0, help_text="Fair order: its estimated GPU seconds over its owner's weight.")
    priority = models.PositiveSmallIntegerField(default=0, help_text="1: an admin asked for it to run next.")
    progress = models.PositiveSmallIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=0)
    not_before = models.DateTimeField(null=True, blank=True, help_text="A retry waits until then.")
    worker = models.CharField(max_length=200, blank=True, help_text="Who claimed the job last.")
    error = models.TextField(blank=True, help_text="What the user is told.")
    error_detail = models.TextField(blank=True, help_text="What went wrong, for admins.")
    image = models.FileField(upload_to="images/%Y/%m/%d/", blank=True)
    batch = models.CharField(
        max_length=32, blank=True, db_index=True, help_text="The pass it last ran in; jobs that share it ran together."
    )
    batch_size = models.PositiveSmallIntegerField(default=1, help_text="How many images that pass made.")
    # An A1111 client's interrupt: the job stops at its next step and ends with the image
    # of that step (a cancel throws the partial image away instead).
    interrupt_requested = models.BooleanField(default=False, help_text="Asked to stop early and keep its image.")
    stopped_at_step = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Stopped early after this many steps: its image is the one of that step."
    )

    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["sequence"]
        indexes = [
            # The queue's two orders (generation/fairness.py): the claim reads its head,
            # positions and ETAs read it all, in the order of one of these.
            models.Index(fields=["status", "-priority", "sequence"], name="job_queue_fifo"),
            models.Index(fields=["status", "-priority", "fair_tag", "sequence"], name="job_queue_fair"),
            models.Index(fields=["owner", "status"], name="job_owner_status"),
            models.Index(fields=["model", "width", "height", "status", "finished_at"], name="job_timing_history"),
            # The ETA's history: the latest complete jobs by finished_at, read by every
            # broadcast, page and snapshot.
            models.Index(fields=["status", "-finished_at"], name="job_status_finished"),
        ]

    def __str__(self) -> str:
        return f"Job {self.pk} ({self.status}): {self.prompt[:40]}"

    @property
    def is_pending(self) -> bool:
        return self.status in self.PENDING

    @property
    def in_group(self) -> bool:
        """One of several images asked for by one prompt (they share a message and a card)."""
        return self.image_count > 1

    @property
    def is_edit(self) -> bool:
        return self.kind != TXT2IMG

    @property
    def work_steps(self) -> int:
        """The steps its pass runs: an edit runs the share of them its strength asks for."""
        return denoise_steps(self.steps, self.strength if self.is_edit else None)

    def generation_request(self) -> GenerationRequest:
        """The pipeline's request for this job's image (an edit's source and mask read from disk)."""
        from generation.files import open_image

        return GenerationRequest(
            model=self.model,
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            width=self.width,
            height=self.height,
            steps=self.steps,
            guidance=self.guidance,
            seed=self.seed,
            scheduler=self.scheduler,
            schedule=self.schedule,
            loras=parse_loras(self.loras),
            clip_skip=self.clip_skip,
            noise_seed_delta=self.noise_seed_delta,
            kind=self.kind,
            strength=self.strength,
            mask_blur=self.mask_blur,
            image=open_image(self.source_image.name) if self.source_image else None,
            mask=open_image(self.mask_image.name) if self.mask_image else None,
        )

    # What jobs must share to be made in one pass of the pipeline: the claim, the ETA
    # and the admin's queue page all group by these.
    PASS_FIELDS = (
        "model",
        "width",
        "height",
        "steps",
        "guidance",
        "scheduler",
        "schedule",
        "loras",
        "clip_skip",
        "noise_seed_delta",
        "kind",
        "strength",
    )

    def pass_key(self) -> tuple:
        """Jobs with equal keys can be made in one pass of the pipeline."""
        return tuple(getattr(self, field) for field in self.PASS_FIELDS)


class CircuitBreaker(models.Model):
    """State of the circuit breaker around a generation backend, shared by all processes."""

    class State(models.TextChoices):
        CLOSED = "closed", "Closed"
        OPEN = "open", "Open"
        HALF_OPEN = "half_open", "Half-open (trial job running)"

    name = models.CharField(max_length=50, primary_key=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.CLOSED)
    failures = models.PositiveIntegerField(default=0, help_text="Consecutive failures.")
    opened_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    GENERATION = "generation"  # the breaker around the image generator

    def __str__(self) -> str:
        return f"{self.name}: {self.state}"

    @classmethod
    def current(cls) -> CircuitBreaker | None:
        """The generation breaker as it is now (None before its first failure)."""
        return cls.objects.filter(name=cls.GENERATION).first()

    def ready_at(self, now: datetime) -> datetime | None:
        """When a job may next be claimed: `now` when closed, the end of the cool-down
        when open (the next claim is the half-open trial), None while a trial runs."""
        if self.state == self.State.HALF_OPEN:
            return None
        if self.state == self.State.CLOSED or self.opened_at is None:
            return now
        return self.opened_at + timedelta(seconds=settings.IMAGEGEN_BREAKER_COOLDOWN_SECONDS)

    def admits(self, now: datetime) -> bool:
        ready = self.ready_at(now)
        return ready is not None and now >= ready


class Worker(models.Model):
    """A GPU worker process, registered when it starts and beating while it lives.

    `name` is what a job records as its worker ("host:pid"). A worker whose last beat
    is older than IMAGEGEN_WORKER_DEAD_AFTER_SECONDS is dead, wherever it ran: its
    job goes back in the queue.
    """

    name = models.CharField(max_length=200, unique=True)
    host = models.CharField(max_length=150)
    pid = models.PositiveIntegerField()
    device = models.CharField(max_length=50)
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField(db_index=True)
    stopping = models.BooleanField(default=False, help_text="Told to stop: it claims nothing more.")
    max_batch = models.PositiveSmallIntegerField(default=1, help_text="The most images it makes in one pass.")
    loaded_model = models.CharField(max_length=200, blank=True, help_text="The model it holds loaded, if any.")
    gpu_memory = models.BigIntegerField(
        null=True, blank=True, help_text="Bytes of GPU memory its process holds (reserved by PyTorch); empty on a CPU."
    )
    load_seconds = models.JSONField(
        default=dict, blank=True, help_text="Model -> how long its last load took, compiling included."
    )
    speed = models.CharField(
        max_length=300, blank=True, help_text="The loaded model's speed mode: what was compiled, and how long it took."
    )
    compiled_in_jobs = models.PositiveIntegerField(
        default=0, help_text="Graphs compiled while running jobs (the speed mode compiles while loading: 0)."
    )
    warmup = models.JSONField(
        default=dict,
        blank=True,
        help_text=(
            "Model -> what its start-up warm-up pass measured: seconds of fixed overhead, and per step "
            "(a floor plus a share per megapixel). The ETA's default for a model with no finished jobs."
        ),
    )

    class Meta:
        ordering = ["host", "pid"]

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def live_since(now: datetime) -> datetime:
        """A worker that beat at or after this moment is live; one silent since, dead."""
        return now - timedelta(seconds=settings.IMAGEGEN_WORKER_DEAD_AFTER_SECONDS)

    def is_live(self, now: datetime) -> bool:
        return self.last_seen_at >= self.live_since(now)


class JobPreview(models.Model):
    """The latest live preview of a running job, for readers that poll (the A1111 API's
    progress); the browser gets the same picture as a `job.preview` event.

    One row per job, written by the worker's bookkeeper about once a second (an upsert)
    and pruned once the job has ended.
    """

    job = models.OneToOneField(ImageJob, models.CASCADE, primary_key=True, related_name="preview")
    step = models.PositiveIntegerField()
    image = models.TextField(help_text="A data URL (small JPEG).")
    updated_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"Preview of job {self.job_id} at step {self.step}"


class ApiKey(models.Model):
    """A user's key for the HTTP APIs (OpenAI and AUTOMATIC1111).

    The key itself is shown once, when it is made; only its SHA-256 digest is stored
    (see generation.api.auth for why a fast hash is right for a random key). Its jobs
    appear in the owner's chat, in a conversation named after the key.
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, default="API", help_text="Also the title of its conversation.")
    prefix = models.CharField(max_length=16, help_text="The key's first characters, to tell keys apart.")
    digest = models.CharField(max_length=64, unique=True)
    conversation = models.ForeignKey(
        "chat.Conversation", models.SET_NULL, null=True, blank=True, related_name="+", editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class ApiRequest(models.Model):
    """An API request by its idempotency key: a client's retry finds the job it queued."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="+")
    key = models.CharField(max_length=64, help_text="SHA-256 of the endpoint and the Idempotency-Key or body.")
    job = models.ForeignKey(ImageJob, models.CASCADE, related_name="+", help_text="The first job of the request.")
    created_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "key"], name="api_request_owner_key")]

    def __str__(self) -> str:
        return f"API request {self.key[:8]} -> job {self.job_id}"


class ApiOptions(models.Model):
    """What a user set through the A1111 API's options: their own default model, and
    every other key they wrote, kept as a whole and returned as written."""

    owner = models.OneToOneField(settings.AUTH_USER_MODEL, models.CASCADE, primary_key=True, related_name="+")
    sd_model_checkpoint = models.CharField(max_length=100, blank=True)
    options = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return f"A1111 options of user {self.owner_id}"
