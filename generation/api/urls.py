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
        # A registry name may hold any character, "/" too.
        path("models/<path:model_id>", openai.model, name="model"),
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
        path("skip", a1111.skip, name="skip"),
        path("cmd-flags", a1111.cmd_flags, name="cmd_flags"),
        path("embeddings", a1111.embeddings, name="embeddings"),
        path("memory", a1111.memory, name="memory"),
        path("png-info", a1111.png_info, name="png_info"),
        # What Imagegen has none of: an empty list, as A1111 answers with none installed.
        path("prompt-styles", a1111.nothing_listed, name="prompt_styles"),
        path("face-restorers", a1111.nothing_listed, name="face_restorers"),
        path("hypernetworks", a1111.nothing_listed, name="hypernetworks"),
        path("realesrgan-models", a1111.nothing_listed, name="realesrgan_models"),
        path("sd-vae", a1111.nothing_listed, name="sd_vae"),
        path("latent-upscale-modes", a1111.nothing_listed, name="latent_upscale_modes"),
        path("extensions", a1111.nothing_listed, name="extensions"),
        path("script-info", a1111.nothing_listed, name="script_info"),
        # The models come from the configuration and the LoRAs are read again when their
        # folder changes: a refresh has nothing to do.
        path("refresh-checkpoints", a1111.refreshed, name="refresh_checkpoints"),
        path("refresh-vae", a1111.refreshed, name="refresh_vae"),
        path("refresh-loras", a1111.refreshed, name="refresh_loras"),
        path("loras", a1111.loras, name="loras"),
        path("<path:rest>", a1111.not_found),
    ],
    "api_a1111",
)
