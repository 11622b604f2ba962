"""URLs of the two APIs; mounted at /v1/ (OpenAI) and /sdapi/v1/ (AUTOMATIC1111)."""

from django.urls import path

from generation.api import a1111, openai

openai_urlpatterns = (
    [
        path("images/generations", openai.images_generations, name="images_generations"),
        path("images/edits", openai.images_edits, name="images_edits"),
        path("images/variations", openai.images_variations, name="images_variations"),
        path("images/files/<str:token>", openai.image, name="image"),
        path("models", openai.models, name="models"),
        path("<path:rest>", openai.not_found),
    ],
    "api_openai",
)

a1111_urlpatterns = (
    [
        path("txt2img", a1111.txt2img, name="txt2img"),
        path("img2img", a1111.img2img, name="img2img"),
        path("extra-single-image", a1111.extra_single_image, name="extra_single_image"),
        path("upscalers", a1111.upscalers, name="upscalers"),
        path("options", a1111.options, name="options"),
        path("sd-models", a1111.sd_models, name="sd_models"),
        path("samplers", a1111.samplers, name="samplers"),
        path("schedulers", a1111.schedulers, name="schedulers"),
        path("scripts", a1111.scripts, name="scripts"),
        path("progress", a1111.progress, name="progress"),
        path("interrupt", a1111.interrupt, name="interrupt"),
        path("<path:rest>", a1111.not_found),
    ],
    "api_a1111",
)
