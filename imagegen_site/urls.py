from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from generation import views as generation_views
from generation.api.urls import a1111_urlpatterns, openai_urlpatterns
from imagegen_site import views as site_views

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", site_views.healthz, name="healthz"),
    path("metrics", site_views.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("jobs/", include("generation.urls")),
    path("v1/", include(openai_urlpatterns)),
    path("sdapi/v1/", include(a1111_urlpatterns)),
    path("api-keys/", generation_views.api_keys, name="api_keys"),
    path("api-keys/<int:key_id>/revoke/", generation_views.api_key_revoke, name="api_key_revoke"),
    path("images/", generation_views.image_gallery, name="gallery"),
    path("", include("chat.urls")),
]

handler400 = "imagegen_site.views.bad_request"
