"""Validation of job parameters, shared by the chat page and the services."""

import json
import secrets

from django import forms
from django.conf import settings

from generation.families import SAMPLER_NAMES, SCHEDULES, SIZE_MAX, SIZE_MIN, SIZE_STEP, ModelLimits
from generation.loras import LoraError, clean_loras
from generation.registry import get_loras, get_registry, model_limits
from generation.request import (
    DEFAULT_SCHEDULE,
    DEFAULT_SCHEDULER,
    EDIT_KINDS,
    IMG2IMG,
    INPAINT,
    KINDS,
    TXT2IMG,
    UPSCALE,
)

PROMPT_MAX_LENGTH = 2000
SEED_MAX = 2**32 - 1
STEPS_MIN, STEPS_MAX = 1, 100
GUIDANCE_MIN, GUIDANCE_MAX = 0, 30
COUNT_MIN, COUNT_MAX = 1, 10
STRENGTH_MIN, STRENGTH_MAX = 0.05, 1.0
MASK_BLUR_MAX = 64
CLIP_SKIP_MIN, CLIP_SKIP_MAX = 1, 12  # AUTOMATIC1111's slider
# How far each kind of edit moves from its source when the request does not say.
DEFAULT_STRENGTH = {IMG2IMG: 0.6, INPAINT: 0.75, UPSCALE: 0.3}
# The chat's two variations of an image (same prompt, new seed).
VARY_SUBTLE, VARY_STRONG = 0.35, 0.7

# Common sizes with their aspect ratios, for the composer's presets (all within the demo limit).
SIZE_PRESETS = [
    ("1:1", 512, 512),
    ("4:3", 576, 432),
    ("3:4", 432, 576),
    ("16:9", 768, 432),
    ("9:16", 432, 768),
    ("1:1 large", 768, 768),
]


def _range_errors(text: str) -> dict[str, str]:
    """The same plain sentence for every way a number can be wrong."""
    return {key: text for key in ("invalid", "min_value", "max_value", "step_size", "max_digits")}


def _number(attrs: dict) -> forms.NumberInput:
    return forms.NumberInput(attrs={"inputmode": "numeric", **attrs})


def _model_choices() -> list[tuple[str, str]]:
    return [(name, f"{name} ({model_limits(name).family.label})") for name in get_registry().names()]


def size_error(label: str, limit: int, step: int = SIZE_STEP, minimum: int = SIZE_MIN) -> str:
    return f"{label}: {minimum}-{limit}, a multiple of {step}."


def model_defaults(limits: ModelLimits) -> dict:
    """What a request for a model gets for each setting it leaves empty: its family's defaults."""
    return {
        "width": limits.default_size,
        "height": limits.default_size,
        "steps": limits.default_steps,
        "guidance": limits.default_guidance,
        "scheduler": limits.default_scheduler,
    }


class JobForm(forms.Form):
    # No max_length on the field: the browser's `maxlength` would cut a pasted prompt
    # without a word. The length is checked in clean_prompt and shown by a counter.
    # Required for a new image (see clean); an edit may keep its source's prompt.
    prompt = forms.CharField(
        strip=True,
        required=False,
        widget=forms.Textarea(
            attrs={
                "rows": 2,
                "id": "prompt-input",
                "data-testid": "prompt-input",
                "data-max-length": PROMPT_MAX_LENGTH,
                "placeholder": "Describe an image…",
                "aria-describedby": "prompt-counter",
            }
        ),
    )
    negative_prompt = forms.CharField(
        required=False,
        strip=True,
        label="Negative prompt",
        help_text="What the image should not show.",
        widget=forms.Textarea(attrs={"rows": 1, "data-max-length": PROMPT_MAX_LENGTH}),
    )
    model = forms.ChoiceField(
        choices=_model_choices, required=False, error_messages={"invalid_choice": "Model: choose one from the list."}
    )
    # Bounds are checked in clean(), against the chosen model's limit.
    width = forms.IntegerField(
        required=False,
        error_messages={"invalid": f"Width: a whole number of pixels, a multiple of {SIZE_STEP}."},
        widget=_number({"min": SIZE_MIN, "step": SIZE_STEP}),
    )
    height = forms.IntegerField(
        required=False,
        error_messages={"invalid": f"Height: a whole number of pixels, a multiple of {SIZE_STEP}."},
        widget=_number({"min": SIZE_MIN, "step": SIZE_STEP}),
    )
    steps = forms.IntegerField(
        min_value=STEPS_MIN,
        max_value=STEPS_MAX,
        required=False,
        error_messages=_range_errors(f"Steps: {STEPS_MIN}-{STEPS_MAX}."),
        help_text="More steps: finer detail, slower.",
        widget=_number({}),
    )
    guidance = forms.FloatField(
        min_value=GUIDANCE_MIN,
        max_value=GUIDANCE_MAX,
        required=False,
        error_messages=_range_errors(f"Guidance: {GUIDANCE_MIN}-{GUIDANCE_MAX}."),
        help_text="How closely to follow the prompt.",
        widget=forms.NumberInput(attrs={"step": "0.5", "inputmode": "decimal"}),
    )
    seed = forms.IntegerField(
        min_value=0,
        max_value=SEED_MAX,
        required=False,
        error_messages=_range_errors(f"Seed: 0-{SEED_MAX}, or empty for a random one."),
        help_text="Empty for random.",
        widget=_number({"placeholder": "random"}),
    )
    # The job's sampler, by its key (A1111's names are the labels); the model's family
    # decides which run (see _check_family, and the page's script).
    scheduler = forms.ChoiceField(
        choices=list(SAMPLER_NAMES.items()),
        required=False,
        label="Sampler",
        error_messages={"invalid_choice": "Sampler: choose one from the list."},
    )
    schedule = forms.ChoiceField(
        choices=[(key, label) for key, (label, _) in SCHEDULES.items()],
        required=False,
        label="Schedule",
        error_messages={
            "invalid_choice": "Schedule: one of " + ", ".join(label for label, _ in SCHEDULES.values()) + "."
        },
        help_text="How the noise steps are spaced (Automatic: the sampler's own).",
    )
    # "name:weight" pairs, as `generation.loras.clean_loras` reads them.
    loras = forms.CharField(required=False, strip=True, label="LoRAs", widget=forms.HiddenInput)
    # AUTOMATIC1111's clip skip and eta noise seed delta: set through the A1111 API's
    # options, not shown in the chat.
    clip_skip = forms.IntegerField(
        min_value=CLIP_SKIP_MIN,
        max_value=CLIP_SKIP_MAX,
        required=False,
        label="Clip skip",
        error_messages=_range_errors(f"Clip skip: {CLIP_SKIP_MIN}-{CLIP_SKIP_MAX} (1: the text encoder's last layer)."),
        widget=forms.HiddenInput,
    )
    noise_seed_delta = forms.IntegerField(
        min_value=0,
        max_value=SEED_MAX,
        required=False,
        label="ENSD",
        error_messages=_range_errors(f"Eta noise seed delta: 0-{SEED_MAX}."),
        widget=forms.HiddenInput,
    )

    count = forms.IntegerField(
        min_value=COUNT_MIN,
        max_value=COUNT_MAX,
        required=False,
        label="Images",
        error_messages=_range_errors(f"Images: {COUNT_MIN}-{COUNT_MAX}."),
        help_text="How many images of this prompt (seeds seed, seed+1, …).",
        widget=_number({"placeholder": "1"}),
    )

    kind = forms.ChoiceField(
        choices=[(kind, kind) for kind in KINDS],
        required=False,
        error_messages={"invalid_choice": "Kind: one of " + ", ".join(KINDS) + "."},
    )
    strength = forms.FloatField(
        min_value=STRENGTH_MIN,
        max_value=STRENGTH_MAX,
        required=False,
        label="Strength",
        error_messages=_range_errors(f"Strength: {STRENGTH_MIN:g}-{STRENGTH_MAX:g} (how far from the image to go)."),
        help_text="Low: close to the image; high: mostly the prompt.",
        widget=forms.NumberInput(attrs={"step": "0.05", "inputmode": "decimal"}),
    )
    mask_blur = forms.IntegerField(
        min_value=0,
        max_value=MASK_BLUR_MAX,
        required=False,
        error_messages=_range_errors(f"Mask blur: 0-{MASK_BLUR_MAX} pixels."),
    )
    # An edit's source: an image the person brings (the composer), or one of theirs
    # (`source_job`); the mask is what they painted in the viewer. The services read
    # them (generation/uploads.py); here they are where their errors show.
    image = forms.FileField(
        required=False,
        label="Start from an image",
        widget=forms.ClearableFileInput(
            attrs={"accept": "image/png,image/jpeg,image/webp", "data-testid": "source-input"}
        ),
    )
    mask = forms.FileField(required=False, widget=forms.HiddenInput)
    source_job = forms.IntegerField(required=False, widget=forms.HiddenInput)

    # Every other default is the model's family's (`model_defaults`): one home for them.
    DEFAULTS = {
        "count": 1,
        "scheduler": DEFAULT_SCHEDULER,
        "schedule": DEFAULT_SCHEDULE,
        "loras": "",
        "clip_skip": 1,
        "noise_seed_delta": 0,
    }
    # Shown apart from the settings grid (the composer's image box, the LoRA picker), or not at all.
    EDIT_FIELDS = (
        "kind",
        "strength",
        "mask_blur",
        "image",
        "mask",
        "source_job",
        "loras",
        "clip_skip",
        "noise_seed_delta",
    )
    # Next to the prompt (the most used); the rest are in the composer's settings panel.
    QUICK_FIELDS = ("model", "count")
    # What the chat remembers of a person's last settings (not the seed: a kept seed
    # would make every new prompt's image from the same noise).
    REMEMBERED = (
        "model",
        "width",
        "height",
        "count",
        "steps",
        "guidance",
        "scheduler",
        "schedule",
        "negative_prompt",
        "loras",
    )
    # For the template: the counter's limit and the size presets.
    prompt_max_length = PROMPT_MAX_LENGTH
    size_presets = SIZE_PRESETS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Show the defaults (the chosen model's family's) as values, so nobody has to guess them.
        model = self.initial.get("model")
        if model not in get_registry():
            model = settings.IMAGEGEN_DEFAULT_MODEL
        defaults = {**self.DEFAULTS, **model_defaults(model_limits(model)), "model": model}
        for key, default in defaults.items():
            self.fields[key].initial = default
            # The page's settings summary names only what differs from these.
            shown = f"{default:g}" if isinstance(default, float) else default
            self.fields[key].widget.attrs["data-default"] = shown
            if key in ("width", "height", "steps", "guidance"):
                self.fields[key].widget.attrs["placeholder"] = shown
        every = {name: model_limits(name) for name in get_registry().names()}
        for key in ("width", "height"):
            self.fields[key].widget.attrs["max"] = max((limits.max_size for limits in every.values()), default=SIZE_MAX)
        # The LoRA picker's list (each with the families it fits; the script offers those
        # of the chosen model's family).
        self.lora_choices = json.dumps([lora.as_dict() for lora in get_loras().all()])
        # The page's script moves the settings to a model's defaults when another model is chosen.
        self.fields["model"].widget.attrs["data-limits"] = json.dumps(
            {name: {**limits.as_dict(), "defaults": model_defaults(limits)} for name, limits in every.items()}
        )

    @property
    def panel_errors(self) -> bool:
        """Errors on the settings panel's fields: the panel opens to show them."""
        shown_elsewhere = {"prompt", *self.QUICK_FIELDS, "image", "strength", "mask", "source_job", "kind"}
        return any(name not in shown_elsewhere for name in self.errors if name != "__all__")

    def _bounded_text(self, field: str, label: str) -> str:
        value = self.cleaned_data.get(field, "")
        if len(value) > PROMPT_MAX_LENGTH:
            raise forms.ValidationError(
                f"{label}: at most {PROMPT_MAX_LENGTH} characters (this one has {len(value)}). Please shorten it."
            )
        return value

    def clean_prompt(self):
        return self._bounded_text("prompt", "Prompt")

    def clean_negative_prompt(self):
        return self._bounded_text("negative_prompt", "Negative prompt")

    def clean(self):
        data = super().clean()
        kind = data.get("kind") or TXT2IMG
        if kind == TXT2IMG and not data.get("prompt") and "prompt" not in self.errors:
            self.add_error("prompt", "Please describe the image you want.")
        # The size check runs whatever else is wrong, so every error shows in one round.
        model = data.get("model") or settings.IMAGEGEN_DEFAULT_MODEL
        limits = model_limits(model) if model in get_registry() else None
        fallback = model_limits(settings.IMAGEGEN_DEFAULT_MODEL)  # an unknown model is an error anyway
        defaults = {**self.DEFAULTS, **model_defaults(limits or fallback)}
        for field, label in (("width", "Width"), ("height", "Height")):
            if field not in data:
                continue  # not a number: its own error says so
            value = data[field]
            if value is None:
                data[field] = defaults[field]
            elif limits is None:
                if not (SIZE_MIN <= value <= SIZE_MAX) or value % SIZE_STEP:
                    self.add_error(field, size_error(label, SIZE_MAX))
            elif not (limits.min_size <= value <= limits.max_size) or value % limits.size_step:
                self.add_error(field, size_error(label, limits.max_size, limits.size_step, limits.min_size))
        if limits is not None:
            self._check_family(data, limits)
            self._check_loras(data, model, limits)
        if self.errors:
            return data
        for key, default in defaults.items():
            if data.get(key) in (None, ""):
                data[key] = default
        if limits is not None and not limits.family.clip_skip:
            data["clip_skip"] = 1  # the family ignores it (see `Family.clip_skip`)
        data["model"] = model
        data["kind"] = kind
        if kind in EDIT_KINDS and limits is not None and limits.family.instruction:
            # An instruction-edit model edits as the prompt says: no strength to give.
            data["strength"], data["mask_blur"] = None, 4
        elif kind in EDIT_KINDS:
            data["strength"] = data.get("strength") or DEFAULT_STRENGTH[kind]
            data["mask_blur"] = 4 if data.get("mask_blur") is None else data["mask_blur"]
        else:
            data["strength"], data["mask_blur"] = None, 4
        if data.get("seed") is None:
            # Chosen now, so the stored parameters reproduce the image.
            data["seed"] = secrets.randbelow(SEED_MAX + 1)
        return data

    def _check_loras(self, data: dict, model: str, limits: ModelLimits) -> None:
        """The LoRAs asked for: installed, of the model's family, at most 4, weights -2..2."""
        if "loras" not in data:
            return
        try:
            data["loras"] = clean_loras(data["loras"], family=limits.family.name, model=model, registry=get_loras())
        except LoraError as exc:
            self.add_error("loras", str(exc))

    def _check_family(self, data: dict, limits: ModelLimits) -> None:
        """What the model's family cannot do: another sampler (or a schedule its sampler
        does not take), a negative prompt, an edit."""
        family = limits.family
        kind = data.get("kind") or TXT2IMG
        if kind != TXT2IMG and kind not in family.edit_pipelines:
            self.add_error("kind", f"{family.label} models cannot {kind} here.")
        scheduler = data.get("scheduler") or limits.default_scheduler
        if scheduler not in limits.schedulers:
            names = ", ".join(SAMPLER_NAMES[key] for key in limits.schedulers)
            self.add_error("scheduler", f"Sampler: {family.label} models use {names}.")
        elif (schedule := data.get("schedule") or DEFAULT_SCHEDULE) not in limits.schedules[scheduler]:
            sampler = family.schedulers[scheduler]
            *some, last = [SCHEDULES[key][0] for key in sampler.schedules]
            names = f"{', '.join(some)} or {last}" if some else last
            asked = SCHEDULES[schedule][0] if schedule in SCHEDULES else schedule
            self.add_error("schedule", f"Schedule: {sampler.label} runs with {names}, not {asked}.")
        if data.get("negative_prompt") and not limits.negative_prompt:
            self.add_error(
                "negative_prompt", f"Negative prompt: {family.label} models do not use one. Please leave it empty."
            )
