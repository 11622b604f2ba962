import json

from django.contrib import admin
from django.utils.html import format_html

from chat.models import Conversation, Message
from generation import services


def _pretty(value) -> str:
    return format_html('<pre style="white-space: pre-wrap; margin: 0">{}</pre>', json.dumps(value, indent=2))


class MessageInline(admin.TabularInline):
    model = Message
    fields = ("role", "content", "metadata_pretty", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    @admin.display(description="Metadata")
    def metadata_pretty(self, message):
        return _pretty(message.metadata)


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("title", "owner", "created_at", "updated_at")
    list_filter = ("created_at", "owner")
    search_fields = ("title", "owner__username")
    list_select_related = ("owner",)
    inlines = [MessageInline]

    # Django's delete page and its "Delete selected" action both end here: running jobs
    # are cancelled and image files removed, as when the owner deletes the conversation.
    def delete_model(self, request, obj):
        services.conversation_delete(conversation=obj)

    def delete_queryset(self, request, queryset):
        for conversation in queryset:
            services.conversation_delete(conversation=conversation)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "conversation", "role", "content", "status", "created_at")
    list_filter = ("role", "created_at")
    search_fields = ("content", "conversation__title")
    list_select_related = ("conversation",)
    # Metadata changes only through the locked deep merge, never by hand.
    fields = ("conversation", "role", "content", "metadata_pretty", "created_at", "updated_at")
    readonly_fields = fields

    # A save from this page would write back metadata merged in meanwhile.
    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request)

    # Django's delete page and its "Delete selected" action both end here: a bot message
    # goes with its job, as the job admin deletes it (cancelled first, files removed).
    def delete_model(self, request, obj):
        self.delete_queryset(request, Message.objects.filter(pk=obj.pk))

    def delete_queryset(self, request, queryset):
        from generation.models import ImageJob

        services.jobs_delete(jobs=ImageJob.objects.filter(message__in=queryset))
        queryset.delete()

    @admin.display(description="Status")
    def status(self, message):
        return message.metadata.get("status", "") if isinstance(message.metadata, dict) else ""

    @admin.display(description="Metadata")
    def metadata_pretty(self, message):
        return _pretty(message.metadata)
