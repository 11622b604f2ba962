"""The API keys page's ready-to-paste settings work as pasted: each snippet, run against
the real web server and gpu cluster, makes an image with the key the page just made."""

import html
import json
import re
import subprocess
import sys

import pytest
import requests
from PIL import Image

from generation.models import ImageJob
from tests.conftest import make_user
from tests.helpers import LAYER_DATABASES

pytestmark = [
    pytest.mark.configured_layer,
    pytest.mark.django_db(transaction=True, databases=LAYER_DATABASES),
    pytest.mark.timeout(300),
]


def _pasted(page: str, element_id: str) -> str:
    """The text a Copy button copies: the element's text, as the browser reads it."""
    found = re.search(rf'id="{element_id}"[^>]*>(?:<code>)?(.*?)(?:</code>)?</(?:pre|code)>', page, re.S)
    return html.unescape(found.group(1))


def _csrf(session: requests.Session, page: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)


@pytest.fixture
def key_page(api_stack):
    """Alice logs in and makes a key on the page, as a browser would: the page it lands on."""
    make_user("alice")
    session = requests.Session()
    login = session.get(f"{api_stack['url']}/login/")
    session.post(
        f"{api_stack['url']}/login/",
        data={"username": "alice", "password": "alice-secret-pw", "csrfmiddlewaretoken": _csrf(session, login.text)},
        headers={"Referer": f"{api_stack['url']}/login/"},
    )
    keys = session.get(f"{api_stack['url']}/api-keys/")
    made = session.post(
        f"{api_stack['url']}/api-keys/",
        data={"name": "snippets", "csrfmiddlewaretoken": _csrf(session, keys.text)},
        headers={"Referer": f"{api_stack['url']}/api-keys/"},
    )
    assert made.history and made.history[0].status_code == 302, "the key is made, then the page redirects"
    assert made.url == f"{api_stack['url']}/api-keys/"
    return made.text


def _run_python(snippet: str, folder) -> Image.Image:
    subprocess.run([sys.executable, "-c", snippet], cwd=folder, check=True, timeout=240)
    with Image.open(folder / "lighthouse.png") as image:
        image.load()
    return image


def test_the_openai_snippet_makes_an_image(key_page, tmp_path):
    snippet = _pasted(key_page, "snippet-openai")

    image = _run_python(snippet, tmp_path)

    assert image.size == (512, 512)
    assert ImageJob.objects.get(prompt="a lighthouse at dusk").conversation.title == "snippets"


def test_the_webuiapi_snippet_makes_an_image(key_page, tmp_path):
    snippet = _pasted(key_page, "snippet-webuiapi")

    image = _run_python(snippet, tmp_path)

    assert image.size == (512, 512)
    assert ImageJob.objects.filter(prompt="a lighthouse at dusk").count() == 1


def test_the_curl_snippet_answers_with_a_link_to_the_image(key_page, tmp_path):
    snippet = _pasted(key_page, "snippet-curl")

    answer = subprocess.run(["bash", "-c", snippet + " --silent --fail"], capture_output=True, check=True, timeout=240)

    url = json.loads(answer.stdout)["data"][0]["url"]
    assert requests.get(url, timeout=10).headers["Content-Type"] == "image/png"


def test_open_webuis_settings_reach_both_apis(api_stack, key_page):
    base_url, key = _pasted(key_page, "owui-openai-url"), _pasted(key_page, "owui-openai-key")
    a1111_url, auth = _pasted(key_page, "owui-a1111-url"), _pasted(key_page, "owui-a1111-auth")

    # What Open WebUI asks first with each engine: the models, and the options.
    models = requests.get(f"{base_url}/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    options = requests.get(f"{a1111_url}/sdapi/v1/options", auth=tuple(auth.split(":", 1)), timeout=10)

    assert models.status_code == 200 and "demo" in [model["id"] for model in models.json()["data"]]
    assert options.status_code == 200 and options.json()["sd_model_checkpoint"]
