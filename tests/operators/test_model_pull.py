"""Operators pull a model ahead of its first job; the admin lists the models and their limits."""

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from generation.registry import get_generator
from tests.helpers import fill_hub_cache


def _pull(name: str) -> str:
    out = io.StringIO()
    call_command("model_pull", name, stdout=out)
    return out.getvalue()


@pytest.fixture
def online_hub(offline_hub, monkeypatch, tiny_models):
    """The Hub cache with the network "on": a download lays the tiny Flux pipeline out in the cache."""
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    downloads = []

    def download(repo_id, revision=None, **kwargs):
        downloads.append(repo_id)
        fill_hub_cache(offline_hub, repo_id, tiny_models["tiny-flux"])
        return str(next((offline_hub / f"models--{repo_id.replace('/', '--')}" / "snapshots").iterdir()))

    monkeypatch.setattr(DiffusionPipeline, "download", download)
    return downloads


def test_a_hub_model_is_pulled_once_into_the_hub_cache(registered, online_hub):
    registered(flux="tiny-org/tiny-flux")
    assert get_generator().needs_download("flux")

    out = _pull("flux")

    assert "Downloading tiny-org/tiny-flux (model 'flux') into the Hugging Face cache" in out
    assert "Model 'flux' (Flux.1) is ready in" in out
    assert not get_generator().needs_download("flux")
    get_generator().load("flux")  # from the cache: no second download
    assert online_hub == ["tiny-org/tiny-flux"]


def test_the_worker_downloads_a_missing_hub_model_once_and_says_so_first(registered, online_hub):
    registered(flux="tiny-org/tiny-flux")
    told = []
    generator = get_generator()
    generator.load("flux", on_download=lambda: told.append("downloading"))
    assert told == ["downloading"] and online_hub == ["tiny-org/tiny-flux"]


def test_pulling_offline_fails_with_the_fix(registered, offline_hub):
    registered(xl="nobody/not-pulled-xl")
    with pytest.raises(CommandError, match=r"Model 'xl' \(nobody/not-pulled-xl\) is not in the Hub cache"):
        _pull("xl")


def test_a_local_model_has_nothing_to_pull(registered, tiny_models):
    registered(xl=tiny_models["tiny-sdxl"])
    assert "is local (folder); there is nothing to download" in _pull("xl")
    with pytest.raises(CommandError, match="Unknown model 'nope'"):
        _pull("nope")


@pytest.mark.django_db
def test_the_admin_queue_page_lists_the_models_with_their_family_and_limits(admin_client, registered, tiny_models):
    registered(xl=tiny_models["tiny-sdxl"], flux=f"{tiny_models['tiny-flux']};offload")
    body = admin_client.get(reverse("admin:generation_imagejob_queue")).content.decode()
    assert "Stable Diffusion XL" in body and "64-2048, ×8 (default 1024)" in body
    assert "Flux.1" in body and "64-2048, ×16 (default 1024)" in body
    assert "CPU offload, VAE tiling" in body
