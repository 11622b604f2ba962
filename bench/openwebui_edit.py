"""Open WebUI's own image code against Imagegen: a generation and edits, end to end.

1. Installs Open WebUI (a pinned `open-webui`, CPU torch first) into var/openwebui-venv,
   unless it is there already.
2. Starts Imagegen with the embedded defaults in a throw-away data folder (the web
   server and the `gpu` cluster, the demo model), with a user and an API key.
3. Starts Open WebUI on a free port with a data folder of its own, sign-in on, nothing
   fetched from the internet, and its "openai" image engine pointed at Imagegen's /v1
   with that key, for generation and for edits.
4. Through Open WebUI's HTTP API, as its first (admin) user: saves the image settings as
   its admin page does, generates one image (the control), then edits a picture made
   here three times: a PNG with a size (the multipart field `image`), the PNG as a list
   asking for n=2 without a size (`image[]`), and the picture as a JPEG, as a photo would
   be. Each answer is fetched back from Open WebUI and decoded. The same generation and
   PNG edit are also sent to Imagegen directly, for comparison.
5. Checks that the images came back as PNGs of the expected size, that Imagegen made
   the jobs (an edit is an `img2img` job whose source is the image sent) in the key's
   conversation, and that its server logged the requests. Prints the outcome and the
   timings and writes them to bench/results/openwebui_edit.json; exits 1 when a check
   fails. Every process it starts is stopped, whatever happens.

Not part of `make test`: the first run downloads Open WebUI and its dependencies
(about 3 GB with CPU torch) from PyPI.

    .venv/bin/python bench/openwebui_edit.py [--size 64x64] [--reinstall] [--keep]
"""

import argparse
import base64
import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import write_result  # noqa: E402
from bench._django import ROOT, bench_env, migrate, setup, start_cluster, start_web, stop  # noqa: E402

VENV = ROOT / "var" / "openwebui-venv"
OPEN_WEBUI_VERSION = "0.12.4"
# Installed first: a CPU wheel of this version lies in pip's find-links folder here,
# where a plain `torch` or another version would pull a CUDA build of gigabytes. The
# constraint keeps Open WebUI's dependencies on it.
TORCH_VERSION = "2.13.0"
MODEL = "demo"
KEY_NAME = "Open WebUI"
TIMEOUT = 600  # seconds for one image request; the queue holds only this run's jobs

# Open WebUI's environment, apart from the image settings: nothing it starts may reach
# the internet. With no embedding model it loads no SentenceTransformer at all (the
# default one would be fetched from the Hub); OFFLINE_MODE also sets HF_HUB_OFFLINE,
# skips plugin installs and the version check.
OFFLINE = {
    "OFFLINE_MODE": "true",
    "HF_HUB_OFFLINE": "1",
    "RAG_EMBEDDING_MODEL": "",
    "RAG_EMBEDDING_MODEL_AUTO_UPDATE": "False",
    "RAG_RERANKING_MODEL_AUTO_UPDATE": "False",
    "WHISPER_MODEL_AUTO_UPDATE": "False",
    "ENABLE_VERSION_UPDATE_CHECK": "false",
    # Its chat model connections (Ollama on localhost, api.openai.com) are not used here.
    "ENABLE_OLLAMA_API": "False",
    "ENABLE_OPENAI_API": "False",
    "ANONYMIZED_TELEMETRY": "False",
    "DO_NOT_TRACK": "true",
    "SCARF_NO_ANALYTICS": "true",
}
# What Open WebUI's environment keeps from ours: not Imagegen's DATA_DIR,
# DATABASE_URL or REDIS_URL, which it reads under the same names.
KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE")


# --- Open WebUI's install --------------------------------------------------------------


def installed_versions() -> tuple[str, str] | None:
    """(open-webui, torch) as installed in the venv, or None."""
    python = VENV / "bin" / "python"
    if not python.exists():
        return None
    script = "import importlib.metadata as m; print(m.version('open-webui'), m.version('torch'))"
    out = subprocess.run([python, "-c", script], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    webui, torch = out.stdout.split()
    return webui, torch


def install(version: str, *, force: bool) -> float | None:
    """Install open-webui==version with CPU torch into VENV; its seconds, or None when
    it was there already."""
    found = installed_versions()
    if not force and found and found[0] == version and found[1].split("+")[0] == TORCH_VERSION:
        return None
    print(f"installing open-webui=={version} and torch=={TORCH_VERSION} into {VENV}", flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    pip = [VENV / "bin" / "python", "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, f"torch=={TORCH_VERSION}"], check=True)
    constraints = VENV / "constraints.txt"
    constraints.write_text(f"torch=={TORCH_VERSION}\n")
    subprocess.run([*pip, "-c", constraints, f"open-webui=={version}"], check=True)
    found = installed_versions()
    if not found or found[0] != version or found[1].split("+")[0] != TORCH_VERSION:
        raise SystemExit(f"the install left {found}, not open-webui {version} with torch {TORCH_VERSION}")
    return time.perf_counter() - started


# --- Pictures --------------------------------------------------------------------------


def picture(width: int, height: int):
    """An RGB gradient, so that a changed pixel shows."""
    from PIL import Image

    image = Image.new("RGB", (width, height))
    image.putdata(
        [(x * 255 // max(width - 1, 1), 96, y * 255 // max(height - 1, 1)) for y in range(height) for x in range(width)]
    )
    return image


def encoded(image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue()


def data_url(data: bytes, mime: str) -> str:
    """How Open WebUI's page sends an image it holds."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def decoded(data: bytes) -> dict:
    """What a returned image is: its format and size (Pillow must decode it)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return {"format": image.format, "size": f"{image.width}x{image.height}"}


def same_pixels(image, stored) -> bool:
    from PIL import Image, ImageChops

    with Image.open(stored) as other:
        other = other.convert("RGB")
        return other.size == image.size and ImageChops.difference(other, image.convert("RGB")).getbbox() is None


# --- Processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_children() -> None:
    """Kill what this process started that still runs, each with its session: also a
    server whose start was cut short before its Popen object came back."""
    out = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, text=True).stdout
    for pid in map(int, out.split()):
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_open_webui(base_env: dict[str, str], data_dir: Path, settings: dict[str, str], log: Path):
    """`open-webui serve` on a free port; returns it and its base URL once /health answers."""
    import requests

    port = free_port()
    env = {key: base_env[key] for key in KEPT if key in base_env}
    env.update(
        DATA_DIR=str(data_dir),
        HF_HOME=str(data_dir / "hf"),
        WEBUI_AUTH="True",
        WEBUI_SECRET_KEY=secrets.token_urlsafe(32),
        PYTHONUNBUFFERED="1",
        **OFFLINE,
        **settings,
    )
    process = subprocess.Popen(
        [VENV / "bin" / "open-webui", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=data_dir,
        env=env,
        stdout=open(log, "ab"),  # noqa: SIM115 - lives as long as the process
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Open WebUI exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{base}/health", timeout=2).status_code == 200:
                return process, base
        except requests.RequestException:
            pass
        time.sleep(0.5)
    stop(process)
    raise RuntimeError(f"Open WebUI did not answer on {base}/health:\n{log.read_text()[-3000:]}")


# --- The run ---------------------------------------------------------------------------


class Run:
    """The outcome as it builds up: timings, what each request returned, the checks."""

    def __init__(self):
        self.data: dict = {"requests": {}, "checks": {}}

    def check(self, name: str, ok: bool, detail=None) -> bool:
        self.data["checks"][name] = {"ok": bool(ok), **({"detail": detail} if detail is not None else {})}
        print(f"  {'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail is not None else ""), flush=True)
        return ok

    @property
    def passed(self) -> bool:
        checks = self.data["checks"].values()
        return bool(checks) and all(check["ok"] for check in checks)


def timed_post(run: Run, name: str, url: str, *, who: str, **request):
    """POST and record the answer's status and time; None (and a failed check) unless 200."""
    import requests

    started = time.perf_counter()
    response = requests.post(url, timeout=TIMEOUT, **request)
    entry = {
        "endpoint": f"POST {urlsplit(url).path}",
        "status": response.status_code,
        "seconds": round(time.perf_counter() - started, 3),
    }
    run.data["requests"][name] = entry
    if response.status_code != 200:
        entry["answer"] = response.text[:2000]
        run.check(f"{name}: {who} answered 200", False, f"{response.status_code} {response.text[:500]}")
        return None
    return response


def owui_images(run: Run, name: str, base: str, token: str, path: str, body: dict) -> list[dict]:
    """POST one of Open WebUI's image endpoints, then fetch each image it stored."""
    import requests

    headers = {"Authorization": f"Bearer {token}"}
    response = timed_post(run, name, f"{base}{path}", who="Open WebUI", json=body, headers=headers)
    if response is None:
        return []
    images = []
    for item in response.json():
        content = requests.get(f"{base}{item['url']}", headers=headers, timeout=60)
        content.raise_for_status()
        images.append(decoded(content.content))
    run.data["requests"][name]["images"] = images
    return images


def direct_images(run: Run, name: str, base: str, key: str, path: str, **request) -> list[dict]:
    """The same request sent to Imagegen itself, as a client of its API would."""
    headers = {"Authorization": f"Bearer {key}"}
    response = timed_post(run, name, f"{base}{path}", who="Imagegen", headers=headers, **request)
    if response is None:
        return []
    images = [decoded(base64.b64decode(item["b64_json"])) for item in response.json()["data"]]
    run.data["requests"][name]["images"] = images
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="64x64", help="the source picture's size and the size asked for")
    parser.add_argument("--open-webui", default=OPEN_WEBUI_VERSION, help="the open-webui version to install")
    parser.add_argument("--reinstall", action="store_true", help="install Open WebUI again even if it is there")
    parser.add_argument("--keep", action="store_true", help="keep the data folders (and their logs) after a pass")
    args = parser.parse_args()
    width, height = (int(side) for side in args.size.split("x"))
    # Stopped by a signal, the run still stops what it started (the finally below).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))

    run = Run()
    run.data["command"] = "bench/openwebui_edit.py " + " ".join(sys.argv[1:])
    total = time.perf_counter()
    install_seconds = install(args.open_webui, force=args.reinstall)
    webui_version, torch_version = installed_versions()
    run.data.update(open_webui=webui_version, open_webui_torch=torch_version, model=MODEL, size=args.size)
    run.data["install_seconds"] = round(install_seconds, 1) if install_seconds is not None else None

    base_env = dict(os.environ)
    env = bench_env()
    imagegen_dir = Path(env["DATA_DIR"])
    webui_dir = Path(tempfile.mkdtemp(prefix="openwebui-bench-"))
    logs = {"imagegen_web": imagegen_dir / "web.log", "gpu": imagegen_dir / "gpu.log", "open_webui": webui_dir / "log"}
    processes: list[subprocess.Popen] = []
    try:
        started = time.perf_counter()
        migrate(env)
        subprocess.run([sys.executable, "manage.py", "build_demo_model"], cwd=ROOT, env=env, check=True)
        setup(env)
        from django.contrib.auth import get_user_model

        from generation.api.auth import api_key_create
        from generation.models import ImageJob

        user = get_user_model().objects.create_user("openwebui", password=secrets.token_urlsafe(16))
        api_key, key = api_key_create(owner=user, name=KEY_NAME)
        web, imagegen = start_web(logs["imagegen_web"])
        processes.append(web)
        gpu_env = {**env, "IMAGEGEN_LOCK_DIR": str(imagegen_dir / "locks")}
        processes.append(start_cluster(gpu_env, "gpu", logs["gpu"]))
        run.data["imagegen_start_seconds"] = round(time.perf_counter() - started, 2)

        import requests

        # The worker loads the model on its first job: a warm-up, so that the timings
        # below are the requests' own.
        started = time.perf_counter()
        warm = direct_images(
            run,
            "warm_up",
            imagegen,
            key,
            "/v1/images/generations",
            json={"prompt": "warm up", "size": args.size, "model": MODEL, "response_format": "b64_json"},
        )
        run.data["requests"]["warm_up"]["note"] = "the gpu worker's first job: loads the model"
        run.check("Imagegen's API answers (warm-up generation)", bool(warm), f"{time.perf_counter() - started:.2f} s")

        image_settings = {
            "ENABLE_IMAGE_GENERATION": "true",
            "IMAGE_GENERATION_ENGINE": "openai",
            "IMAGE_GENERATION_MODEL": MODEL,
            "IMAGE_SIZE": args.size,
            "IMAGES_OPENAI_API_BASE_URL": f"{imagegen}/v1",
            "IMAGES_OPENAI_API_KEY": key,
            "ENABLE_IMAGE_EDIT": "true",
            "IMAGE_EDIT_ENGINE": "openai",
            "IMAGE_EDIT_MODEL": MODEL,
            # Open WebUI's default: no size unless the request gives one.
            "IMAGE_EDIT_SIZE": "",
            "IMAGES_EDIT_OPENAI_API_BASE_URL": f"{imagegen}/v1",
            "IMAGES_EDIT_OPENAI_API_KEY": key,
        }
        run.data["open_webui_settings"] = {
            name: ("<the API key>" if name.endswith("_API_KEY") else value) for name, value in image_settings.items()
        }
        started = time.perf_counter()
        webui, owui = start_open_webui(base_env, webui_dir, image_settings, logs["open_webui"])
        processes.append(webui)
        run.data["open_webui_start_seconds"] = round(time.perf_counter() - started, 2)
        run.data["open_webui_reported_version"] = requests.get(f"{owui}/api/version", timeout=10).json().get("version")

        # The first account to sign up is the admin.
        admin = {"name": "Admin", "email": "admin@example.com", "password": secrets.token_urlsafe(16)}
        signup = requests.post(f"{owui}/api/v1/auths/signup", json=admin, timeout=30)
        signup.raise_for_status()
        token = signup.json()["token"]
        run.check(
            "Open WebUI's first account is an admin", signup.json().get("role") == "admin", signup.json().get("role")
        )
        headers = {"Authorization": f"Bearer {token}"}

        # What the admin page (Settings > Images) shows and saves.
        config = requests.get(f"{owui}/api/v1/images/config", headers=headers, timeout=30)
        config.raise_for_status()
        shown = config.json()
        expected = {
            "ENABLE_IMAGE_GENERATION": True,
            "IMAGE_GENERATION_ENGINE": "openai",
            "IMAGES_OPENAI_API_BASE_URL": f"{imagegen}/v1",
            "ENABLE_IMAGE_EDIT": True,
            "IMAGE_EDIT_ENGINE": "openai",
            "IMAGES_EDIT_OPENAI_API_BASE_URL": f"{imagegen}/v1",
        }
        differs = {name: shown.get(name) for name, value in expected.items() if shown.get(name) != value}
        run.check("Open WebUI took the image settings from its environment", not differs, differs or None)
        saved = requests.post(f"{owui}/api/v1/images/config/update", json=shown, headers=headers, timeout=60)
        run.check(
            "Open WebUI's admin page saves these settings",
            saved.status_code == 200,
            None if saved.status_code == 200 else f"{saved.status_code} {saved.text[:300]}",
        )

        from PIL import Image

        source = picture(width, height)
        png, jpeg = encoded(source), encoded(source, "JPEG")
        # What Imagegen should hold as each edit's source: the pixels sent.
        sent = {"png": source, "jpeg": Image.open(io.BytesIO(jpeg)).convert("RGB")}
        prompts = {
            "generation": "open webui control: a lighthouse at dusk",
            "edit": "open webui edit: make it a sunset",
            "edit_list": "open webui edit: make it a night sky",
            "edit_jpeg": "open webui edit: a photo, made blue",
            "direct_generation": "direct control: a lighthouse at dusk",
            "direct_edit": "direct edit: make it a sunset",
        }
        print("requests:", flush=True)
        images = {}
        images["direct_generation"] = direct_images(
            run,
            "direct_generation",
            imagegen,
            key,
            "/v1/images/generations",
            json={
                "prompt": prompts["direct_generation"],
                "size": args.size,
                "model": MODEL,
                "response_format": "b64_json",
            },
        )
        images["generation"] = owui_images(
            run,
            "generation",
            owui,
            token,
            "/api/v1/images/generations",
            {"prompt": prompts["generation"], "size": args.size},
        )
        images["direct_edit"] = direct_images(
            run,
            "direct_edit",
            imagegen,
            key,
            "/v1/images/edits",
            files={"image": ("source.png", png, "image/png")},
            data={"prompt": prompts["direct_edit"], "size": args.size, "model": MODEL, "response_format": "b64_json"},
        )
        images["edit"] = owui_images(
            run,
            "edit",
            owui,
            token,
            "/api/v1/images/edit",
            {"image": data_url(png, "image/png"), "prompt": prompts["edit"], "size": args.size},
        )
        images["edit_list"] = owui_images(
            run,
            "edit_list",
            owui,
            token,
            "/api/v1/images/edit",
            {"image": [data_url(png, "image/png")], "prompt": prompts["edit_list"], "n": 2},
        )
        images["edit_jpeg"] = owui_images(
            run,
            "edit_jpeg",
            owui,
            token,
            "/api/v1/images/edit",
            {"image": data_url(jpeg, "image/jpeg"), "prompt": prompts["edit_jpeg"], "size": args.size},
        )
        for name, entry in run.data["requests"].items():
            if name != "warm_up":
                sizes = [image["size"] for image in entry.get("images", [])]
                print(f"  {name:18} {entry['endpoint']:36} {entry['status']}  {entry['seconds']:7.2f} s  {sizes}")

        print("checks:", flush=True)
        one_png = [{"format": "PNG", "size": args.size}]
        for name in ("generation", "edit", "edit_jpeg"):
            run.check(f"{name} through Open WebUI: one PNG of {args.size}", images[name] == one_png, images[name])
        run.check(
            "edit_list through Open WebUI: two PNGs",
            [i["format"] for i in images["edit_list"]] == ["PNG", "PNG"],
            images["edit_list"],
        )
        for name in ("direct_generation", "direct_edit"):
            run.check(f"{name}: one PNG of {args.size}", images[name] == one_png, images[name])

        jobs = {}
        for name, prompt in prompts.items():
            rows = ImageJob.objects.filter(owner=user, prompt=prompt).select_related("conversation").order_by("pk")
            jobs[name] = [
                {
                    "id": job.pk,
                    "kind": job.kind,
                    "status": job.status,
                    "size": f"{job.width}x{job.height}",
                    "conversation": job.conversation.title,
                    "source_is_the_image_sent": (
                        same_pixels(sent["jpeg" if name == "edit_jpeg" else "png"], job.source_image.open("rb"))
                        if job.source_image
                        else None
                    ),
                }
                for job in rows
            ]
        run.data["imagegen_jobs"] = jobs
        expected_jobs = {
            "generation": ("txt2img", 1),
            "direct_generation": ("txt2img", 1),
            "edit": ("img2img", 1),
            "edit_list": ("img2img", 2),
            "edit_jpeg": ("img2img", 1),
            "direct_edit": ("img2img", 1),
        }
        for name, (kind, count) in expected_jobs.items():
            made = jobs[name]
            ok = len(made) == count and all(j["kind"] == kind and j["status"] == "complete" for j in made)
            run.check(
                f"{name}: Imagegen made {count} complete {kind} job(s)",
                ok,
                [(j["kind"], j["status"], j["size"]) for j in made],
            )
        through = [j for name in ("edit", "edit_list", "edit_jpeg") for j in jobs[name]]
        run.check(
            "the edits' source in Imagegen is the image sent through Open WebUI",
            bool(through) and all(j["source_is_the_image_sent"] for j in through),
        )
        run.check(
            f"the jobs are in the key's conversation ({KEY_NAME!r})",
            all(j["conversation"] == KEY_NAME for made in jobs.values() for j in made),
        )
        run.data["edit_without_size"] = {
            "source": args.size,
            "returned": [i["size"] for i in images["edit_list"]],
            "note": "Open WebUI sends no size when neither the request nor IMAGE_EDIT_SIZE gives one",
        }
        web_log = logs["imagegen_web"].read_text(errors="replace")
        lines = {
            path: sum(f'"POST {path}' in line for line in web_log.splitlines())
            for path in ("/v1/images/generations", "/v1/images/edits")
        }
        run.data["imagegen_web_log_requests"] = lines
        run.check("Imagegen's server logged 4 POST /v1/images/edits", lines["/v1/images/edits"] == 4, lines)
    except Exception as exc:
        run.data["error"] = f"{type(exc).__name__}: {exc}"
        print(f"error: {run.data['error']}", file=sys.stderr, flush=True)
    finally:
        for process in reversed(processes):
            stop(process)
        stop_children()
    run.data["total_seconds"] = round(time.perf_counter() - total, 1)
    run.data["passed"] = passed = run.passed and "error" not in run.data

    print()
    for name in (
        "open_webui",
        "open_webui_torch",
        "install_seconds",
        "imagegen_start_seconds",
        "open_webui_start_seconds",
        "total_seconds",
        "passed",
    ):
        print(f"{name:28} {run.data.get(name)}")
    path = write_result("openwebui_edit", run.data)
    print(f"written to {path.relative_to(ROOT)}")
    if passed and not args.keep:
        shutil.rmtree(webui_dir, ignore_errors=True)
        shutil.rmtree(imagegen_dir, ignore_errors=True)
    else:
        print("logs: " + ", ".join(f"{name} {log}" for name, log in logs.items()))
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
