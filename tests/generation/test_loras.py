"""LoRAs: found in the folder, offered with their family's models, checked when asked
for, and applied by the worker as adapters without reloading the model."""

import json

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from PIL import Image
from safetensors.numpy import save_file

from generation import services
from generation.loras import LoraRegistry, family_of, read_header, take_prompt_tags
from generation.models import ImageJob
from generation.pipeline import DiffusersGenerator
from generation.registry import get_generator, get_registry
from generation.request import GenerationRequest

# --- Families, read from the files ---------------------------------------------------


def _lora_file(path, shapes: dict[str, tuple[int, ...]], metadata=None):
    save_file({key: np.zeros(shape, dtype=np.float16) for key, shape in shapes.items()}, path, metadata=metadata)
    return path


# Tensor names and shapes as the common trainers write them.
LAYOUTS = {
    "sd15": {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 768),
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": (320, 4),
    },
    "sdxl": {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 2048),
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": (640, 4),
    },
    "sdxl-kohya": {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 2048),
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 1280),
    },
    "sd15-kohya": {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 768),
    },
    "sd3": {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (4, 1536)},
    "flux": {"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": (4, 3072)},
    "flux-kohya": {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (4, 3072)},
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_loras_family_is_read_from_its_tensors(tmp_path, layout):
    path = _lora_file(tmp_path / "x.safetensors", LAYOUTS[layout])
    assert family_of(read_header(path)) == layout.partition("-")[0]


def test_a_loras_metadata_names_its_family_before_its_tensors_do(tmp_path):
    path = _lora_file(tmp_path / "x.safetensors", LAYOUTS["sd15"], {"ss_base_model_version": "sdxl_base_v1-0"})
    assert family_of(read_header(path)) == "sdxl"


def test_the_folder_is_read_again_when_a_file_is_dropped_in(tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    _lora_file(folder / "detail.safetensors", LAYOUTS["sd15"])
    _lora_file(folder / "mystery.safetensors", {"something.else": (2, 2)})  # no family: not offered
    (folder / "notes.txt").write_text("not a LoRA")
    registry = LoraRegistry(folder, {"film": f"{_lora_file(tmp_path / 'f.safetensors', LAYOUTS['sd3'])};family=sdxl"})
    assert registry.names() == ["detail", "film"]
    assert registry.get("film").family == "sdxl"  # as registered, over what the tensors say
    assert [lora.name for lora in registry.for_family("sd15")] == ["detail"]

    _lora_file(folder / "xl-light.safetensors", LAYOUTS["sdxl"])
    assert registry.names() == ["detail", "film", "xl-light"]
    assert [lora.name for lora in registry.for_family("sdxl")] == ["film", "xl-light"]


def test_a_flux_lora_is_offered_with_flux_kontext_too(tmp_path):
    _lora_file(tmp_path / "flux-look.safetensors", LAYOUTS["flux"])
    registry = LoraRegistry(tmp_path)
    assert [lora.name for lora in registry.for_family("flux_kontext")] == ["flux-look"]
    assert registry.for_family("sd3") == []


def test_a1111_prompt_tags_are_taken_out_of_the_prompt():
    prompt, tags = take_prompt_tags("a castle, <lora:style:0.8>, at dusk <LORA:grain>")
    assert prompt == "a castle, at dusk"
    assert tags == [("style", "0.8"), ("grain", "1")]


# --- Asking for LoRAs --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loras", "message"),
    [
        ("nope:1", "LoRA 'nope' is not installed (for demo: grain, ink, style)."),
        ("xl-style:1", "LoRA xl-style is made for Stable Diffusion XL models; demo is a Stable Diffusion 1.x/2.x"),
        ("style:2.5", "LoRA style: the weight is a number from -2 to 2."),
        ("style:heavy", "LoRA style: the weight is a number from -2 to 2."),
        ("style grain ink style:0.5 grain:1", "LoRAs: at most 4 at once (5 were asked for)."),
        ("style:1 style:0.5", "LoRA style is listed twice."),
    ],
)
def test_a_bad_lora_request_is_refused_with_a_clear_message_and_nothing_is_queued(
    loras_installed, alice, alice_chat, loras, message
):
    with pytest.raises(ValidationError) as refused:
        services.job_submit(user=alice, conversation=alice_chat, prompt="a castle", loras=loras)
    assert refused.value.message_dict["loras"][0].startswith(message)
    assert not ImageJob.objects.exists()


def test_a_job_keeps_its_loras_sorted_with_their_weights(loras_installed, submit):
    job = submit(loras="style:0.75, grain")
    assert job.loras == "grain:1 style:0.75"
    assert job.generation_request().loras == (("grain", 1.0), ("style", 0.75))


def test_jobs_with_different_lora_sets_never_share_a_pass(loras_installed, settings, submit):
    settings.IMAGEGEN_MAX_BATCH = 4
    settings.IMAGEGEN_BATCH_WINDOW = 8
    for prompt, loras in [("plain 1", ""), ("style 1", "style"), ("plain 2", ""), ("style 2", "style:1")]:
        submit(prompt, loras=loras)
    submit("style at half", loras="style:0.5")
    submit("two", loras="style grain")

    passes = []
    while jobs := services.jobs_claim(worker="w:1", max_batch=4):
        passes.append(sorted(job.prompt for job in jobs))
        assert len({job.loras for job in jobs}) == 1
    assert passes == [["plain 1", "plain 2"], ["style 1", "style 2"], ["style at half"], ["two"]]


# --- The worker ----------------------------------------------------------------------


def _pixels(job) -> np.ndarray:
    with Image.open(job.image.path) as png:
        return np.asarray(png.convert("RGB")).astype(int)


@pytest.mark.django_db(transaction=True)
def test_through_the_worker_weight_zero_is_no_lora_and_weight_one_another_image(
    loras_installed, sync_q, alice, alice_chat
):
    generator = get_generator()

    def make(loras):
        job = services.job_submit(
            user=alice, conversation=alice_chat, prompt="a castle", steps=3, width=64, height=64, seed=7, loras=loras
        ).jobs[0]
        job.refresh_from_db()
        assert job.status == "complete", job.error_detail
        return job

    plain = make("")
    loads = generator.loads
    zero, one, half = make("style:0"), make("style:1"), make("style:0.5")
    both = make("style:1 grain:1")
    again = make("")

    assert np.array_equal(_pixels(zero), _pixels(plain))
    assert np.abs(_pixels(one) - _pixels(plain)).mean() > 1
    assert np.abs(_pixels(half) - _pixels(one)).mean() > 0.5
    assert np.abs(_pixels(both) - _pixels(one)).mean() > 0.5
    assert np.array_equal(_pixels(again), _pixels(plain)), "switching the LoRAs off gives the plain image back"
    # Every switch was an adapter switch: the model was not loaded again, each LoRA file once.
    assert generator.loads == loads
    assert generator.lora_loads == 2

    with Image.open(both.image.path) as png:
        prompt, fields = png.info["parameters"].split("\n")
    assert prompt == "a castle <lora:grain:1> <lora:style:1>"
    hashes = {name: loras_installed.get(name).short_hash for name in ("grain", "style")}
    assert f'Lora hashes: "grain: {hashes["grain"]}, style: {hashes["style"]}"' in fields


def _request(loras, seed=1):
    return GenerationRequest(
        model="demo", prompt="a castle", negative_prompt="", width=64, height=64, steps=2, guidance=5, seed=seed,
        loras=loras,
    )  # fmt: skip


def test_the_worker_keeps_a_bounded_set_of_loras_loaded(loras_installed, tiny_models):
    generator = DiffusersGenerator(
        get_registry(), cache_dir=tiny_models["demo"].parent, loras=loras_installed, lora_cache=2
    )
    for loras in [(("style", 1.0),), (("grain", 1.0),), (("style", 0.5),), (("ink", 1.0),), (("style", 1.0),)]:
        generator.generate(_request(loras))
    # style, grain; style again (cached); ink evicts grain (style was used since); style stays.
    assert (generator.loads, generator.lora_loads) == (1, 3)
    generator.generate(_request((("grain", 1.0),)))
    assert generator.lora_loads == 4


def test_a_lora_removed_after_its_job_was_queued_fails_the_job_with_a_clear_message(
    loras_installed, tiny_models, tmp_path
):
    generator = DiffusersGenerator(get_registry(), cache_dir=tiny_models["demo"].parent, loras=LoraRegistry(tmp_path))
    with pytest.raises(Exception, match="LoRA style is no longer installed."):
        generator.generate(_request((("style", 1.0),)))


def test_the_form_offers_each_lora_with_the_families_it_fits(loras_installed):
    from generation.forms import JobForm

    offered = {row["name"]: row["fits"] for row in json.loads(JobForm().lora_choices)}
    assert offered == {"grain": ["sd15"], "ink": ["sd15"], "style": ["sd15"], "xl-style": ["sdxl"]}


def test_build_demo_model_writes_a_lora_to_try_that_the_chat_offers_at_once(settings, tmp_path, tiny_models):
    from django.core.management import CommandError, call_command

    from generation import registry

    settings.IMAGEGEN_LORA_DIR = tmp_path / "loras"
    registry.get_loras.cache_clear()
    try:
        call_command("build_demo_model", "--lora", "demo-look", "--seed", "5", stdout=open(tmp_path / "out", "w"))
        assert [lora.as_dict()["name"] for lora in registry.get_loras().for_family("sd15")] == ["demo-look"]
        with pytest.raises(CommandError, match="letters, digits"):
            call_command("build_demo_model", "--lora", "no/slashes")
    finally:
        registry.get_loras.cache_clear()
