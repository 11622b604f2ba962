from contextvars import ContextVar

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from generation import fairness, selectors, services
from generation.api import auth
from generation.models import ApiKey, CircuitBreaker, ImageJob, QueueWeight, Worker
from generation.registry import get_registry, model_family, model_limits

TIMINGS = ("created_at", "started_at", "heartbeat_at", "finished_at")

# job id -> position, for the changelist page being rendered by this thread.
_page_positions: ContextVar[dict[int, int] | None] = ContextVar("page_positions", default=None)


class ViewOnlyPagesMixin:
    """Change pages that only show the row: no Save buttons, and a POST to them is refused.

    A save from the page would write back every column as the page read it, over what
    the worker or a service wrote meanwhile. The changelist's actions still need the
    change permission, which is asked for without an object.
    """

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request)


def _model_row(name: str) -> dict:
    """A registered model as the queue page lists it: where it comes from and its family's limits."""
    info, limits = get_registry().get(name), model_limits(name)
    return {
        "name": name,
        "source": info.source,
        "kind": info.spec.kind,
        "offload": info.offload,
        "limits": limits,
        "sizes": f"{limits.min_size}-{limits.max_size}, ×{limits.size_step} (default {limits.default_size})",
        "family_dtype": limits.family.dtype,
    }


@admin.register(ImageJob)
class ImageJobAdmin(ViewOnlyPagesMixin, admin.ModelAdmin):
    # Ten columns, so the list fits a laptop next to the admin's navigation and filters;
    # the job's page has every field.
    list_display = (
        "id",
        "thumbnail",
        "status",
        "short_prompt",
        "owner",
        "settings",
        "place",
        "ran_with",
        "created_at",
        "duration",
    )
    list_filter = ("status", "kind", "model", "owner", "created_at")
    # Searching a batch name lists the jobs that ran in that pass.
    search_fields = ("prompt", "owner__username", "=batch", "loras")
    list_select_related = ("owner",)
    ordering = ("-created_at", "-id")  # newest first; the queue view shows the FIFO order
    date_hierarchy = "created_at"
    actions = ["cancel_jobs", "retry_jobs", "run_jobs_next", "requeue_jobs_at_end", "mark_jobs_as_error"]
    readonly_fields = [field.name for field in ImageJob._meta.fields] + [
        "thumbnail",
        "source_thumbnail",
        "duration",
        "position",
    ]
    fieldsets = [
        (None, {"fields": ("thumbnail", "status", "owner", "conversation", "message", "prompt", "negative_prompt")}),
        (
            "Parameters",
            {"fields": ("model", "width", "height", "steps", "guidance", "seed", "scheduler", "schedule", "loras")},
        ),
        (
            "Edit",
            {
                "fields": (
                    "kind",
                    "strength",
                    "mask_blur",
                    "source_job",
                    "source_thumbnail",
                    "source_image",
                    "mask_image",
                )
            },
        ),
        (
            "Queue",
            {
                "fields": (
                    "position",
                    "sequence",
                    "priority",
                    "fair_tag",
                    "fair_cost",
                    "progress",
                    "attempts",
                    "not_before",
                    "worker",
                    "batch",
                    "batch_size",
                )
            },
        ),
        ("Prompt's images", {"fields": ("image_index", "image_count")}),
        ("AUTOMATIC1111", {"fields": ("clip_skip", "noise_seed_delta", "interrupt_requested", "stopped_at_step")}),
        ("Outcome", {"fields": ("error", "error_detail", "image")}),
        ("Timings", {"fields": (*TIMINGS, "duration")}),
    ]

    def has_add_permission(self, request):
        return False  # jobs are made by submitting prompts

    # Django's delete page and its "Delete selected" action both end here.
    def delete_model(self, request, obj):
        services.jobs_delete(jobs=ImageJob.objects.filter(pk=obj.pk))

    def delete_queryset(self, request, queryset):
        services.jobs_delete(jobs=queryset)

    # --- Columns ----------------------------------------------------------------------

    @admin.display(description="Prompt")
    def short_prompt(self, job):
        prompt = " ".join(job.prompt.split())
        return prompt if len(prompt) <= 60 else prompt[:59] + "…"

    @admin.display(description="Model, size, kind", ordering="model")
    def settings(self, job):
        return format_html(
            '{}<br><span class="quiet">{}×{} · {} · {}</span>',
            job.model,
            job.width,
            job.height,
            job.get_kind_display(),
            model_family(job.model).label,
        )

    @admin.display(description="Place")
    def place(self, job):
        """A queued job's position, a running one's progress."""
        if job.status == ImageJob.Status.PROCESSING:
            return f"{job.progress}%"
        return self.position(job)

    @admin.display(description="Position")
    def position(self, job):
        positions = _page_positions.get()
        if positions is None:
            positions = selectors.queue_positions()
        return positions.get(job.pk, "—")

    @admin.display(description="Ran with")
    def ran_with(self, job):
        """The pass the job last ran in, linked to all its jobs."""
        if not job.batch:
            return "—"
        if job.batch_size <= 1:
            return "alone"
        url = reverse("admin:generation_imagejob_changelist") + f"?q={job.batch}"
        return format_html('<a href="{}">{} images ({})</a>', url, job.batch_size, job.batch)

    @admin.display(description="Duration")
    def duration(self, job):
        if job.started_at and job.finished_at:
            return f"{(job.finished_at - job.started_at).total_seconds():.1f} s"
        return "—"

    @admin.display(description="Image")
    def thumbnail(self, job):
        if job.status != ImageJob.Status.COMPLETE or not job.image:
            return "—"
        url = reverse("admin:generation_imagejob_image", args=[job.pk])
        return format_html('<a href="{0}"><img src="{0}" alt="" width="64" height="64" loading="lazy"></a>', url)

    @admin.display(description="Source")
    def source_thumbnail(self, job):
        """An edit's source, its own copy (the image it came from may be gone)."""
        if not job.source_image:
            return "—"
        url = reverse("admin:generation_imagejob_source", args=[job.pk])
        return format_html('<a href="{0}"><img src="{0}" alt="" width="64" height="64" loading="lazy"></a>', url)

    def changelist_view(self, request, extra_context=None):
        # Positions are global, whatever the filters: one query for the whole page, kept
        # for this request alone (the admin instance is shared by every request thread).
        token = _page_positions.set(selectors.queue_positions())
        try:
            extra_context = {**(extra_context or {}), "queue_url": reverse("admin:generation_imagejob_queue")}
            return super().changelist_view(request, extra_context)
        finally:
            _page_positions.reset(token)

    # --- Views ------------------------------------------------------------------------

    def get_urls(self):
        return [
            path("queue/", self.admin_site.admin_view(self.queue_view), name="generation_imagejob_queue"),
            path(
                "<int:job_id>/image.png", self.admin_site.admin_view(self.image_view), name="generation_imagejob_image"
            ),
            path(
                "<int:job_id>/source.png",
                self.admin_site.admin_view(self.source_view),
                name="generation_imagejob_source",
            ),
            *super().get_urls(),
        ]

    def queue_view(self, request):
        """The queue in position order, with ETAs, and what is running now."""
        if not self.has_view_permission(request):
            raise Http404
        entries = selectors.queue_eta()
        jobs = ImageJob.objects.select_related("owner").in_bulk([entry["job_id"] for entry in entries])
        rows = [{**entry, "job": jobs[entry["job_id"]]} for entry in entries if entry["job_id"] in jobs]
        running = ImageJob.objects.filter(status=ImageJob.Status.PROCESSING).select_related("owner")
        context = {
            **self.admin_site.each_context(request),
            "title": "Queue",
            "rows": rows,
            "running": running,
            "service": selectors.service_status(),
            "policy": fairness.describe(),
            "shares": fairness.gpu_shares(now=timezone.now()),
            "models": [_model_row(name) for name in get_registry().names()],
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/generation/queue.html", context)

    def image_view(self, request, job_id: int):
        return self._png(request, job_id, "image", status=ImageJob.Status.COMPLETE)

    def source_view(self, request, job_id: int):
        return self._png(request, job_id, "source_image")

    def _png(self, request, job_id: int, field: str, **lookup):
        """One of a job's stored PNGs (its image, an edit's source), for staff who may view jobs."""
        if not self.has_view_permission(request):
            raise Http404
        stored = getattr(get_object_or_404(ImageJob, pk=job_id, **lookup), field)
        if not stored:
            raise Http404
        return FileResponse(stored.open("rb"), content_type="image/png")

    # --- Actions: the same services as the users' buttons -------------------------------

    def _apply(self, request, queryset, service, done: str):
        changed, refused = 0, []
        for job in queryset:
            try:
                service(job=job)
                changed += 1
            except services.JobError as exc:
                refused.append(f"#{job.pk}: {exc}")
        if changed:
            self.message_user(request, f"{done}: {changed} job(s).", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not changed: " + "; ".join(refused), messages.WARNING)

    @admin.action(description="Cancel selected jobs", permissions=["change"])
    def cancel_jobs(self, request, queryset):
        self._apply(request, queryset, services.job_cancel, "Cancelled")

    @admin.action(description="Retry selected jobs (failed or cancelled)", permissions=["change"])
    def retry_jobs(self, request, queryset):
        self._apply(request, queryset, services.job_retry, "Queued again")

    @admin.action(description="Move selected queued jobs to the end of the queue", permissions=["change"])
    def requeue_jobs_at_end(self, request, queryset):
        self._apply(request, queryset.order_by("sequence"), services.job_requeue_at_end, "Moved to the end")

    @admin.action(description="Run selected queued jobs next", permissions=["change"])
    def run_jobs_next(self, request, queryset):
        self._apply(request, queryset.order_by(*fairness.queue_order()), services.job_run_next, "To run next")

    @admin.action(description="Mark selected jobs as error", permissions=["change"])
    def mark_jobs_as_error(self, request, queryset):
        self._apply(request, queryset, services.job_mark_error, "Marked as error")


@admin.register(CircuitBreaker)
class CircuitBreakerAdmin(ViewOnlyPagesMixin, admin.ModelAdmin):
    list_display = ("name", "state", "failures", "opened_at", "updated_at")
    readonly_fields = ("name", "state", "failures", "opened_at", "updated_at")

    def has_add_permission(self, request):
        return False


@admin.register(Worker)
class WorkerAdmin(ViewOnlyPagesMixin, admin.ModelAdmin):
    """GPU worker processes; a live one beat within IMAGEGEN_WORKER_DEAD_AFTER_SECONDS."""

    list_display = (
        "name",
        "live",
        "device",
        "loaded_model",
        "gpu_memory_display",
        "host",
        "pid",
        "started_at",
        "last_seen_at",
        "stopping",
    )
    list_filter = ("host", "device")
    readonly_fields = [field.name for field in Worker._meta.fields]

    def has_add_permission(self, request):
        return False

    @admin.display(boolean=True)
    def live(self, worker):
        return worker.is_live(timezone.now())

    @admin.display(description="GPU memory", ordering="gpu_memory")
    def gpu_memory_display(self, worker):
        if worker.gpu_memory is None:
            return "–"
        return f"{worker.gpu_memory / 2**30:.1f} GiB"


@admin.register(ApiKey)
class ApiKeyAdmin(ViewOnlyPagesMixin, admin.ModelAdmin):
    """Keys are made here for any user (the key is shown once, on the page after Save),
    listed, and revoked; never edited."""

    list_display = ("name", "owner", "prefix", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "owner__username", "prefix")
    list_select_related = ("owner",)
    actions = ["revoke_keys"]
    readonly_fields = ("prefix", "created_at", "last_used_at", "revoked_at", "conversation")
    exclude = ("digest",)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("owner", "name")
        return ("owner", "name", *self.readonly_fields)

    def save_model(self, request, obj, form, change):
        # Made by the service, which draws the key; the page after Save shows it once.
        api_key, request._new_api_key = auth.api_key_create(owner=obj.owner, name=obj.name)
        obj.pk = api_key.pk
        obj.prefix, obj.digest, obj.created_at = api_key.prefix, api_key.digest, api_key.created_at

    def response_add(self, request, obj, post_url_continue=None):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "api_key": obj,
            "key": request._new_api_key,
            "title": "API key created",
        }
        response = TemplateResponse(request, "admin/generation/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request, queryset):
        for api_key in queryset.filter(revoked_at__isnull=True):
            auth.api_key_revoke(api_key=api_key)
        self.message_user(request, "Revoked the selected keys.", messages.SUCCESS)


@admin.register(QueueWeight)
class QueueWeightAdmin(admin.ModelAdmin):
    """Users' weights under the fair queue policy (IMAGEGEN_QUEUE_POLICY=fair); 1 without a row."""

    list_display = ("owner", "weight")
    list_editable = ("weight",)
    search_fields = ("owner__username",)
    autocomplete_fields = ("owner",)


class QueueWeightInline(admin.StackedInline):
    model = QueueWeight
    can_delete = False
    verbose_name = verbose_name_plural = "Queue weight (fair policy)"


class ImagegenUserAdmin(UserAdmin):
    """Django's user admin; deleting a user also stops their jobs and removes their images."""

    inlines = [*UserAdmin.inlines, QueueWeightInline]

    # Django's delete page and its "Delete selected" action both end here.
    def delete_model(self, request, obj):
        services.user_delete(user=obj)

    def delete_queryset(self, request, queryset):
        for user in queryset:
            services.user_delete(user=user)


admin.site.unregister(get_user_model())
admin.site.register(get_user_model(), ImagegenUserAdmin)
