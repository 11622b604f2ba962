"""Validation of job parameters, shared by the chat page, the API and the services."""

import secrets

from django import forms
from django.conf import settings

from generation.pipeline import DEFAULT_SCHEDULER, SCHEDULERS
from generation.registry import get_registry

PROMPT_MAX_LENGTH = 2000
SEED_MAX = 2**32 - 1
SIZE_MIN = 64
SIZE_MAX = 2048


_SIZE_ERRORS = {"step_size": "Use a multiple of 8 pixels."}


def _model_choices() -> list[tuple[str, str]]:
    return [(name, name) for name in get_registry().names()]


class JobForm(forms.Form):
    prompt = forms.CharField(
        max_length=PROMPT_MAX_LENGTH,
        strip=True,
        error_messages={"required": "Please describe the image you want."},
        widget=forms.Textarea(attrs={"rows": 2, "id": "prompt-input", "placeholder": "Describe an image…"}),
    )
    negative_prompt = forms.CharField(
        max_length=PROMPT_MAX_LENGTH, required=False, strip=True, widget=forms.Textarea(attrs={"rows": 1})
    )
    model = forms.ChoiceField(choices=_model_choices, required=False)
    width = forms.IntegerField(
        min_value=SIZE_MIN, max_value=SIZE_MAX, step_size=8, required=False, error_messages=_SIZE_ERRORS
    )
    height = forms.IntegerField(
        min_value=SIZE_MIN, max_value=SIZE_MAX, step_size=8, required=False, error_messages=_SIZE_ERRORS
    )
    steps = forms.IntegerField(min_value=1, max_value=100, required=False)
    guidance = forms.FloatField(min_value=0, max_value=30, required=False)
    seed = forms.IntegerField(min_value=0, max_value=SEED_MAX, required=False, help_text="Empty for random.")
    scheduler = forms.ChoiceField(choices=[(key, label) for key, (_, label, _) in SCHEDULERS.items()], required=False)

    DEFAULTS = {"width": 512, "height": 512, "steps": 20, "guidance": 7.0, "scheduler": DEFAULT_SCHEDULER}

    def clean_guidance(self):
        value = self.cleaned_data.get("guidance")
        if value is not None and value != value:  # NaN passes min/max checks
            raise forms.ValidationError("Guidance must be a number.")
        return value

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        for key, default in self.DEFAULTS.items():
            if data.get(key) in (None, ""):
                data[key] = default
        data["model"] = data.get("model") or settings.IMAGEGEN_DEFAULT_MODEL
        limit = get_registry().get(data["model"]).max_size
        for field in ("width", "height"):
            if data[field] > limit:
                self.add_error(field, f"The {data['model']} model makes images up to {limit} pixels wide and high.")
        if data.get("seed") is None:
            # Chosen now, so the stored parameters reproduce the image.
            data["seed"] = secrets.randbelow(SEED_MAX + 1)
        return data
