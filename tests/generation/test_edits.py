"""Edits through the real worker: image-to-image, inpainting and upscaling in every family,
passes of edits, cancel and retry, and bad input that creates nothing."""

import io

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from PIL import Image, ImageFilter

from chat.models import Message
from generation import files, services, worker
from generation.models import ImageJob
from generation.pipeline import DiffusersGenerator
from generation.registry import get_generator, get_registry, model_limits
from generation.request import GenerationRequest
from generation.uploads import PAINTED, TRANSPARENT, WHITE, mask_from, read_image
from tests.conftest import make_user
from tests.helpers import run_pass

FAMILIES = ["demo", "tiny-sdxl", "tiny-sd3", "tiny-flux"]


@pytest.fixture
def tiny(registered, tiny_models):
    return registered(**{name: path for name, path in tiny_models.items() if name != "demo"})


def _pixels(job: ImageJob) -> np.ndarray:
    with Image.open(job.image.path) as png:
        return np.asarray(png.convert("RGB"), dtype=int)


def _source(width=64, height=64, seed=0) -> Image.Image:
    """A picture with structure (stripes and a square), so a changed pixel shows."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, :, 0] = (np.arange(width) * 4 % 256)[None, :]
    pixels[:, :, 1] = (np.arange(height) * 3 % 256)[:, None]
    pixels[height // 4 : height // 2, width // 4 : width // 2] = rng.integers(0, 255, 3)
    return Image.fromarray(pixels, "RGB")


def _right_half(width=64, height=64) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (width // 2, 0, width, height))
    return mask


def _submit(user, conversation, **params):
    params = {"prompt": "a lighthouse", "steps": 4, "guidance": 4.5, "seed": 7, **params}
    return services.job_submit(user=user, conversation=conversation, **params).jobs


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("model", FAMILIES)
def test_each_family_edits_an_image_and_inpaints_only_inside_the_mask(model, tiny, sync_q, alice, alice_chat):
    (made,) = _submit(alice, alice_chat, model=model, width=64, height=64)
    made.refresh_from_db()
    assert made.status == "complete", made.error_detail

    (edited,) = _submit(alice, alice_chat, model=model, prompt="a lighthouse in snow", source_job=made.pk, strength=0.5)
    edited.refresh_from_db()
    assert edited.status == "complete", edited.error_detail
    assert (edited.kind, edited.strength, edited.source_job_id) == ("img2img", 0.5, made.pk)
    assert (edited.width, edited.height) == (64, 64), "an edit keeps its source's size"
    with Image.open(edited.image.path) as png:
        assert "Denoising strength: 0.5" in png.info["parameters"]
    assert not np.array_equal(_pixels(edited), _pixels(made))

    source = _source()
    (inpainted,) = _submit(alice, alice_chat, model=model, prompt="a red door", source=source, mask=_right_half())
    inpainted.refresh_from_db()
    assert inpainted.status == "complete", inpainted.error_detail
    assert inpainted.kind == "inpaint"
    result = _pixels(inpainted)
    kept = np.asarray(source, dtype=int)
    # Left of the mask and its blurred edge (three blur radii), every pixel is the source's own.
    edge = 32 - 3 * inpainted.mask_blur
    assert np.array_equal(result[:, :edge], kept[:, :edge])
    assert np.abs(result[:, 40:] - kept[:, 40:]).mean() > 5, "inside the mask the image changed"
    with Image.open(inpainted.image.path) as png:
        assert "Mask blur: 4" in png.info["parameters"]


@pytest.mark.django_db(transaction=True)
def test_an_instruction_edit_model_edits_from_the_prompt_alone(tiny, sync_q, alice, alice_chat):
    (made,) = _submit(alice, alice_chat, model="tiny-kontext", width=64, height=96)
    (edited,) = _submit(
        alice, alice_chat, model="tiny-kontext", prompt="make it night", source_job=made.pk, strength=0.3
    )
    made.refresh_from_db()
    edited.refresh_from_db()
    assert made.status == edited.status == "complete", (made.error_detail, edited.error_detail)
    assert (edited.kind, edited.strength, edited.width, edited.height) == ("img2img", None, 64, 96)
    with Image.open(edited.image.path) as png:
        assert "Denoising strength" not in png.info["parameters"] and "make it night" in png.info["parameters"]
    assert not np.array_equal(_pixels(edited), _pixels(made))
    # It makes no masked or upscaled edits: a clear message, nothing queued.
    for kind in ("inpaint", "upscale"):
        with pytest.raises(ValidationError, match=f"Flux.1 Kontext models cannot {kind}"):
            _submit(alice, alice_chat, model="tiny-kontext", source_job=made.pk, kind=kind, mask=_right_half(64, 96))
    assert ImageJob.objects.count() == 2


def test_a_low_strength_gives_back_the_source_as_the_model_sees_it(tiny_models):
    """Random weights cannot draw the source back through their VAE; what a strength near 0
    must give is that round trip, and a high strength must go far from it.

    A random model is unlike a trained one in three ways that hide the source, so this
    test's own copy of the demo model is made like a trained one in each: its encoder
    has no variance (a random one's swamps its mean), its latents' scaling factor is
    one over their spread (what the factor is defined as), and its noise predictions
    are small (a random UNet's are huge, so any step would move far).
    """
    import torch

    generator = DiffusersGenerator(get_registry(), cache_dir=tiny_models["demo"].parent)
    pipe = generator.load("demo")
    with torch.no_grad():
        channels = pipe.vae.config.latent_channels
        pipe.vae.quant_conv.weight[channels:] = 0
        pipe.vae.quant_conv.bias[channels:] = -30.0  # log-variance: a standard deviation of ~3e-7
        pipe.unet.conv_out.weight *= 0.001
        pipe.unet.conv_out.bias *= 0.001
    source = _source()
    with torch.inference_mode():
        spread = pipe.vae.encode(pipe.image_processor.preprocess(source)).latent_dist.mean.std().item()
        pipe.vae.register_to_config(scaling_factor=1 / spread)
        tensor = pipe.image_processor.preprocess(source)
        latents = pipe.vae.encode(tensor).latent_dist.mode()
        round_trip = pipe.image_processor.postprocess(pipe.vae.decode(latents).sample, output_type="pil")[0]
    reference = np.asarray(round_trip, dtype=int)

    def distance(strength: float) -> float:
        request = GenerationRequest(
            model="demo", prompt="a cat", negative_prompt="", width=64, height=64, steps=20, guidance=4.0, seed=1,
            kind="img2img", strength=strength, image=source,
        )  # fmt: skip
        return float(np.abs(np.asarray(generator.generate(request), dtype=int) - reference).mean())

    low, high = distance(0.05), distance(1.0)
    assert low < 3, f"strength 0.05 is {low:.1f} levels from the source on average"
    assert high > 5 * low


@pytest.mark.django_db(transaction=True)
def test_an_upscale_doubles_the_image_within_the_models_bounds(tiny, sync_q, alice, alice_chat):
    (made,) = _submit(alice, alice_chat, model="demo", width=64, height=96)
    (bigger,) = _submit(alice, alice_chat, model="demo", source_job=made.pk, kind="upscale")
    bigger.refresh_from_db()
    assert bigger.status == "complete", bigger.error_detail
    assert (bigger.width, bigger.height, bigger.strength) == (128, 192, 0.3)
    with Image.open(bigger.image.path) as png:
        assert png.size == (128, 192)
        assert "Hires upscale: 2" in png.info["parameters"]


@pytest.mark.django_db
def test_an_upscale_stops_at_the_models_largest_size(alice, alice_chat):
    largest = model_limits("demo").max_size
    (fitted,) = _submit(
        alice, alice_chat, model="demo", source=_source(largest * 3 // 4, largest * 3 // 8), kind="upscale"
    )
    assert (fitted.width, fitted.height) == (largest, largest // 2), "the same shape, at the bound"
    with pytest.raises(ValidationError, match="already as large"):
        _submit(alice, alice_chat, model="demo", source=_source(largest, largest // 2), kind="upscale")


@pytest.mark.django_db(transaction=True)
def test_edits_of_four_users_share_a_pass_and_each_equals_its_image_made_alone(settings, runner_for, alice, bob):
    settings.IMAGEGEN_MAX_BATCH = 4
    settings.IMAGEGEN_BATCH_WINDOW = 8
    worker._BATCH_FITS.clear()
    users = [alice, bob, make_user("carol"), make_user("dave")]
    params = {"model": "demo", "steps": 4, "strength": 0.6, "kind": "img2img"}
    jobs = []
    for index, user in enumerate(users):
        conversation = user.conversations.create(title="edits")
        (job,) = _submit(user, conversation, prompt=f"a view {index}", source=_source(seed=index), seed=index, **params)
        jobs.append(job)
    run_pass(runner_for(get_generator()))

    together = [ImageJob.objects.get(pk=job.pk) for job in jobs]
    assert {job.status for job in together} == {"complete"}
    assert len({job.batch for job in together}) == 1 and together[0].batch_size == 4
    generator = get_generator()
    for job in together:
        alone = np.asarray(generator.generate(job.generation_request()), dtype=int)
        assert np.abs(_pixels(job) - alone).max() <= 2, "the same image, within rounding"
    assert np.abs(_pixels(together[0]) - _pixels(together[1])).max() > 20


@pytest.mark.django_db(transaction=True)
def test_an_edit_is_cancelled_and_tried_again_with_its_source_kept(runner_for, alice, alice_chat):
    (job,) = _submit(alice, alice_chat, model="demo", source=_source(), strength=0.5)
    services.job_cancel(job=job)
    job.refresh_from_db()
    assert job.status == "cancelled"
    services.job_retry(job=job)
    run_pass(runner_for(get_generator()))
    job.refresh_from_db()
    assert job.status == "complete", job.error_detail
    assert job.kind == "img2img" and job.source_image.name == files.final_name(job.pk, "source")
    with Image.open(job.source_image.path) as kept:
        assert np.array_equal(np.asarray(kept), np.asarray(_source()))


@pytest.mark.django_db(transaction=True)
def test_deleting_a_conversation_removes_an_edits_source_and_mask(alice, alice_chat):
    (job,) = _submit(alice, alice_chat, model="demo", source=_source(), mask=_right_half())
    paths = [job.source_image.path, job.mask_image.path]
    assert all(files.storage().exists(name) for name in (job.source_image.name, job.mask_image.name))
    services.conversation_delete(conversation=alice_chat)
    assert not any(__import__("os").path.exists(path) for path in paths)


# --- Bad input: a clear message, nothing created -----------------------------------------


def _png(image: Image.Image, fmt="PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def test_uploads_that_are_not_safe_images_are_refused_with_a_reason():
    with pytest.raises(ValidationError, match="not an image"):
        read_image(b"GIF89a not really")
    with pytest.raises(ValidationError, match="PNG, JPEG or WebP"):
        read_image(_png(Image.new("RGB", (8, 8)), "GIF"))
    with pytest.raises(ValidationError, match="at most 4096 pixels"):
        read_image(_png(Image.new("L", (5000, 10))))
    with pytest.raises(ValidationError, match="at most 20 MB"):
        read_image(b"\x89PNG" + b"\0" * (20 * 2**20 + 1))
    # Bombs: a few kilobytes that claim 40000 x 40000 (or 4100 x 4100) pixels; refused from the header.
    bomb = _png(Image.new("1", (40000, 40000)))
    assert len(bomb) < 1_000_000
    with pytest.raises(ValidationError, match="too many pixels to open safely"):
        read_image(bomb)
    with pytest.raises(ValidationError, match="at most 4096 pixels"):
        read_image(_png(Image.new("1", (4100, 4100))))
    assert read_image(_png(Image.new("RGB", (16, 8)), "WEBP")).size == (16, 8)


def test_masks_mark_what_to_repaint_in_each_clients_way_and_must_fit_the_image():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 4, 8))  # the left half transparent
    assert np.asarray(mask_from(rgba, size=(8, 8), marks=TRANSPARENT))[:, :4].min() == 255
    assert np.asarray(mask_from(rgba, size=(8, 8), marks=TRANSPARENT))[:, 4:].max() == 0
    assert np.asarray(mask_from(rgba, size=(8, 8), marks=PAINTED))[:, 4:].min() == 255
    white = Image.new("RGB", (8, 8))
    white.paste((255, 255, 255), (0, 0, 2, 8))
    assert np.asarray(mask_from(white, size=(8, 8), marks=WHITE)).mean() == 255 / 4
    with pytest.raises(ValidationError, match="same size as the image"):
        mask_from(rgba, size=(16, 8), marks=TRANSPARENT)
    with pytest.raises(ValidationError, match="transparency"):
        mask_from(white, size=(8, 8), marks=TRANSPARENT)
    with pytest.raises(ValidationError, match="nothing is marked"):
        mask_from(Image.new("RGB", (8, 8)), size=(8, 8), marks=WHITE)


@pytest.mark.django_db
def test_bad_edits_say_why_and_create_nothing(alice, alice_chat, bob, bob_chat):
    (bobs,) = _submit(bob, bob_chat, model="demo", width=64, height=64)
    ImageJob.objects.filter(pk=bobs.pk).update(status="complete", image="images/x.png")
    before = (ImageJob.objects.count(), Message.objects.count())
    cases = [
        ({"source_job": bobs.pk}, "source_job", "no finished image of yours"),
        ({"source_job": "x"}, "source_job", "no finished image of yours"),
        ({"kind": "img2img"}, "image", "needs an image"),
        ({"kind": "inpaint", "source": _source()}, "mask", "paint the area"),
        ({"source": _source(), "mask": _right_half(32, 32)}, "mask", "same size"),
        ({"source": _source(), "strength": 0}, "strength", "Strength: 0.05-1"),
        ({"source": _source(), "strength": 1.5}, "strength", "Strength: 0.05-1"),
        ({"source": _source(), "kind": "txt2img"}, "kind", "choose an edit"),
    ]
    for params, field, text in cases:
        with pytest.raises(ValidationError) as caught:
            _submit(alice, alice_chat, model="demo", **params)
        assert text in " ".join(caught.value.message_dict[field]), (params, caught.value.message_dict)
    assert (ImageJob.objects.count(), Message.objects.count()) == before


def test_a_mask_blur_edge_is_where_inpainting_may_touch_the_source():
    # The soft edge the worker pastes with: no further than three radii from the mask.
    mask = _right_half().filter(ImageFilter.GaussianBlur(4))
    assert np.asarray(mask)[:, : 32 - 12].max() == 0
