from django.contrib import admin

from generation.models import CircuitBreaker, ImageJob


@admin.register(ImageJob)
class ImageJobAdmin(admin.ModelAdmin):
    list_display = ("id", "status", "owner", "model", "width", "height", "progress", "attempts", "created_at")
    list_filter = ("status", "model", "created_at")
    search_fields = ("prompt", "owner__username")
    list_select_related = ("owner",)
    readonly_fields = [field.name for field in ImageJob._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(CircuitBreaker)
class CircuitBreakerAdmin(admin.ModelAdmin):
    list_display = ("name", "state", "failures", "opened_at", "updated_at")
    readonly_fields = ("name", "state", "failures", "opened_at", "updated_at")
