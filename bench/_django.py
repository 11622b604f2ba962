"""Set up Django for a benchmark in a throw-away data folder (or a given database)."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench_env(**overrides: str | None) -> dict[str, str]:
    """The environment for a benchmark's processes: a fresh DATA_DIR unless one is given."""
    env = dict(os.environ)
    env.setdefault("SECRET_KEY", "bench-only-not-secret")
    env.setdefault("IMAGEGEN_MODEL_CACHE", str(ROOT / "var" / "models"))
    if "DATA_DIR" not in overrides:
        env["DATA_DIR"] = tempfile.mkdtemp(prefix="imagegen-bench-")
    # Benchmarks measure the product, not its abuse limits.
    env.setdefault("IMAGEGEN_MAX_PENDING_PER_USER", "100000")
    env.setdefault("IMAGEGEN_SUBMISSIONS_PER_MINUTE", "100000")
    # Nor the gpu worker's start-up warm-up passes (bench/eta.py turns them on): the
    # generators' pass logs would count them.
    env.setdefault("IMAGEGEN_WARMUP", "0")
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def fresh_postgres(server: str, name: str) -> str:
    """Drop and create database `name` on `server` (postgres://user@host:port); its URL."""
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


def migrate(env: dict[str, str]) -> None:
    manage = [sys.executable, "manage.py", "migrate", "--noinput", "-v0"]
    subprocess.run(manage, cwd=ROOT, env=env, check=True)
    if not env.get("REDIS_URL"):
        subprocess.run([*manage, "--database", "channels"], cwd=ROOT, env=env, check=True)


def setup(env: dict[str, str]) -> None:
    """Use `env` in this process and set Django up with it."""
    os.environ.clear()
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "imagegen_site.settings"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def start_cluster(env: dict[str, str], name: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env={**env, "Q_CLUSTER_NAME": name},
        stdout=open(log, "ab"),  # noqa: SIM115 - lives as long as the process
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen) -> None:
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def user_with_conversation(username: str = "bench", title: str = "bench"):
    """A user (password bench-password-1) and a conversation of theirs."""
    from django.contrib.auth import get_user_model

    from chat.services import conversation_create

    user = get_user_model().objects.create_user(username, password="bench-password-1")
    return user, conversation_create(owner=user, title=title)


def start_web(log: Path, **extra: str) -> tuple[subprocess.Popen, str]:
    """daphne on a free port against this benchmark's database, as the Procfile runs it
    (the same launcher the tests use); returns it and its base URL once it answers."""
    from django.conf import settings

    from tests.helpers import start_web as launch

    return launch(Path(settings.DATA_DIR), log, **extra)
