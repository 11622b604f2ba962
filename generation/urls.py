from django.urls import path

from generation import views

app_name = "generation"

urlpatterns = [
    path("<int:job_id>/image.png", views.job_image, name="job_image"),
    path("<int:job_id>/source.png", views.job_source, name="job_source"),
    path("<int:job_id>/cancel/", views.job_cancel, name="job_cancel"),
    path("<int:job_id>/retry/", views.job_retry, name="job_retry"),
    path("<int:job_id>/card/", views.job_card, name="job_card"),
]
