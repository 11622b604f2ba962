"""A real gpu cluster process runs a Hub model from the Hub cache with the network off."""

import pytest
from PIL import Image

from generation import services
from generation.models import ImageJob
from tests.helpers import fill_hub_cache, start_cluster, stop, wait_for


@pytest.mark.django_db(transaction=True)
def test_a_gpu_cluster_runs_a_hub_model_offline_and_fails_a_missing_one_clearly(
    registered, tiny_models, offline_hub, alice, alice_chat, tmp_path
):
    fill_hub_cache(offline_hub, "tiny-org/tiny-flux", tiny_models["tiny-flux"])
    models = {"flux": "tiny-org/tiny-flux", "missing": "nobody/not-pulled"}
    registered(**models)
    params = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 11}
    flux = services.job_submit(user=alice, conversation=alice_chat, model="flux", guidance=3.5, **params).jobs[0]
    missing = services.job_submit(user=alice, conversation=alice_chat, model="missing", **params).jobs[0]

    cluster = start_cluster(
        "gpu",
        tmp_path,
        tmp_path / "gpu.log",
        IMAGEGEN_MODELS=",".join(f"{name}={source}" for name, source in models.items()),
        HF_HUB_CACHE=str(offline_hub),
        HF_HUB_OFFLINE="1",
    )
    try:
        wait_for(
            lambda: (
                ImageJob.objects.filter(pk__in=[flux.pk, missing.pk], status__in=["complete", "error"]).count() == 2
            ),
            timeout=180,
            message="both jobs finished by the gpu cluster",
        )
    except AssertionError:
        print((tmp_path / "gpu.log").read_text()[-4000:])
        raise
    finally:
        stop(cluster)

    flux.refresh_from_db()
    missing.refresh_from_db()
    assert flux.status == "complete", flux.error_detail
    with Image.open(flux.image.path) as png:
        assert "Distilled CFG Scale: 3.5" in png.info["parameters"]
    assert missing.status == "error"
    assert missing.error.startswith("This model is not available on the server yet.")
    assert "Model 'missing' (nobody/not-pulled) is not in the Hub cache" in missing.error_detail
    assert "manage.py model_pull missing" in missing.error_detail
