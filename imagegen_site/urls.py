from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from generation import views as generation_views
from imagegen_site import views as site_views

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", site_views.healthz, name="healthz"),
    path("metrics", site_views.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("jobs/", include("generation.urls")),
    path("images/", generation_views.image_gallery, name="gallery"),
    path("", include("chat.urls")),
]

handler400 = "imagegen_site.views.bad_request"
