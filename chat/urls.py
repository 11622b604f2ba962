from django.urls import path

from chat import views

app_name = "chat"

urlpatterns = [
    path("", views.home, name="home"),
    path("settings/composer/", views.composer_settings_save, name="composer_settings"),
    path("conversations/new/", views.conversation_new, name="conversation_new"),
    path("conversations/<int:conversation_id>/", views.conversation_detail, name="conversation"),
    path("conversations/<int:conversation_id>/rename/", views.conversation_rename, name="conversation_rename"),
    path("conversations/<int:conversation_id>/delete/", views.conversation_delete, name="conversation_delete"),
    path("conversations/<int:conversation_id>/submit/", views.job_submit, name="job_submit"),
]
