import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from imagegen_site import settings as site_settings
from tests.helpers import BASE_DIR

# A child process with nothing from this shell: no developer's .env either.
BARE = {"PATH": "/usr/bin:/bin", "IMAGEGEN_ENV_FILE": ""}


def _settings_in_child(env: dict[str, str], expression: str) -> subprocess.CompletedProcess:
    code = f"import imagegen_site.settings as s; print({expression})"
    clean = {**BARE, **env}
    return subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=clean, capture_output=True, text=True)


def test_debug_off_without_a_secret_key_fails_loudly():
    result = _settings_in_child({}, "s.DEBUG")
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr


def test_debug_is_off_unless_asked_for():
    assert _settings_in_child({"SECRET_KEY": "k"}, "s.DEBUG").stdout.strip() == "False"
    assert _settings_in_child({"DEBUG": "1"}, "s.DEBUG").stdout.strip() == "True"


def test_database_url_switches_to_postgresql_and_redis_url_to_redis():
    env = {"SECRET_KEY": "k", "DATABASE_URL": "postgres://u@db:5432/app", "REDIS_URL": "redis://r:6379/0"}
    result = _settings_in_child(
        env, "s.DATABASES['default']['ENGINE'], s.CHANNEL_LAYERS['default']['BACKEND'], s.Q_CLUSTER.get('redis')"
    )
    assert result.stdout.strip() == (
        "django.db.backends.postgresql channels_redis.core.RedisChannelLayer redis://r:6379/0?socket_connect_timeout=1"
    )


def test_the_web_process_pools_postgresql_connections_and_the_workers_do_not():
    postgres = {"SECRET_KEY": "k", "DATABASE_URL": "postgres://u@db:5432/app"}
    pooled = _settings_in_child({**postgres, "DATABASE_POOL_MAX_SIZE": "20"}, "s.DATABASES['default']['OPTIONS']")
    assert pooled.stdout.strip() == (
        "{'connect_timeout': 3, 'keepalives': 1, 'keepalives_idle': 5, 'keepalives_interval': 2, 'keepalives_count': 3,"
        " 'tcp_user_timeout': 10000, 'pool': {'min_size': 1, 'max_size': 20, 'timeout': 3.0, 'reconnect_timeout': 3.0}}"
    )
    assert "pool" not in _settings_in_child(postgres, "s.DATABASES['default'].get('OPTIONS', {})").stdout
    procfile = {line.split(":")[0]: line for line in (BASE_DIR / "Procfile").read_text().splitlines()}
    assert "DATABASE_POOL_MAX_SIZE" in procfile["web"]
    # A cluster forks its workers, and a pool must not cross a fork: even given the
    # variable (from .env, say), `manage.py qcluster` does not pool.
    code = (
        "import sys; sys.argv = ['manage.py', 'qcluster']; import imagegen_site.settings as s;"
        " print(s.DATABASES['default'].get('OPTIONS', {}))"
    )
    env = {**BARE, **postgres, "DATABASE_POOL_MAX_SIZE": "20"}
    cluster = subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True)
    assert cluster.returncode == 0, cluster.stderr
    assert "pool" not in cluster.stdout


def test_the_embedded_defaults_need_no_services():
    result = _settings_in_child(
        {"SECRET_KEY": "k"},
        "s.DATABASES['default']['ENGINE'], s.CHANNEL_LAYERS['default']['BACKEND'], s.Q_CLUSTER['orm']",
    )
    assert result.stdout.split() == [
        "django.db.backends.sqlite3",
        "channels_lite.layers.core.SQLiteChannelLayer",
        "default",
    ]


@pytest.mark.parametrize(
    "env,message",
    [
        ({"DEBUG": "maybe"}, "DEBUG must be a boolean"),
        ({"IMAGEGEN_TIMEOUT_SECONDS": "soon"}, "IMAGEGEN_TIMEOUT_SECONDS must be an integer"),
        ({"IMAGEGEN_TIMEOUT_SECONDS": "0"}, "IMAGEGEN_TIMEOUT_SECONDS must be at least 1"),
        ({"IMAGEGEN_MODELS": "broken"}, "IMAGEGEN_MODELS entries must look like name=/path"),
        ({"IMAGEGEN_MODELS": "demo=/x"}, "reserved"),
        ({"IMAGEGEN_MODELS": "flux=black-forest-labs/FLUX.1-dev;fast"}, "model 'flux': unknown option 'fast'"),
        ({"IMAGEGEN_MODELS": "x=/m.safetensors;family=sd4"}, "unknown option 'family=sd4'"),
        ({"IMAGEGEN_DEFAULT_MODEL": "sdxl"}, "is not in IMAGEGEN_MODELS"),
        ({"DATABASE_URL": "nonsense://x"}, "DATABASE_URL is not a valid database URL"),
        ({"DATABASE_URL": "postgres://u@db/app", "DATABASE_POOL_MAX_SIZE": "-1"}, "must be at least 0"),
    ],
)
def test_bad_values_fail_loudly(env, message):
    result = _settings_in_child({"SECRET_KEY": "k", **env}, "1")
    assert result.returncode != 0
    assert message in result.stderr


def test_env_helpers_raise_improperly_configured(monkeypatch):
    monkeypatch.setenv("X_FLOAT", "fast")
    with pytest.raises(ImproperlyConfigured):
        site_settings.env_float("X_FLOAT", 1.0)
    monkeypatch.setenv("X_LIST", " a, b ,,c ")
    assert site_settings.env_list("X_LIST", []) == ["a", "b", "c"]


def test_the_embedded_sqlite_database_runs_in_wal_mode_with_immediate_transactions(tmp_path):
    code = (
        "import django; django.setup(); from django.db import connection; "
        "c = connection.cursor(); c.execute('PRAGMA journal_mode'); "
        "print(c.fetchone()[0], connection.settings_dict['OPTIONS']['transaction_mode'])"
    )
    env = {**BARE, "SECRET_KEY": "k", "DATA_DIR": str(tmp_path)}
    env["DJANGO_SETTINGS_MODULE"] = "imagegen_site.settings"
    result = subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True)
    assert result.stdout.split() == ["wal", "IMMEDIATE"], result.stderr


def test_a_fresh_data_dir_migrates_and_the_channel_layer_file_holds_only_its_own_tables(tmp_path):
    import sqlite3

    env = {**BARE, "SECRET_KEY": "k", "DATA_DIR": str(tmp_path)}
    for database in ("default", "channels"):
        result = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--database", database, "-v0"],
            cwd=BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
    tables = {
        row[0]
        for row in sqlite3.connect(tmp_path / "channels.sqlite3").execute(
            "SELECT name FROM sqlite_master WHERE type='table'"
        )
    }
    assert {t for t in tables if not t.startswith(("sqlite_", "django_migrations"))} == {
        "channels_lite_event",
        "channels_lite_groupmembership",
    }
    schedule = (
        sqlite3.connect(tmp_path / "db.sqlite3").execute("SELECT func, cluster FROM django_q_schedule").fetchall()
    )
    assert sorted(schedule) == [
        ("generation.tasks.expire_stuck_jobs", "maintenance"),
        ("generation.tasks.prune", "maintenance"),
    ]


def test_production_settings_pass_the_deploy_check():
    env = {
        **BARE,
        "SECRET_KEY": "x7!Qm2#vR9$kL4@pW8^zN3&cT6*yB1(hJ5)dF0-gS2+eA7=uK9_oI4~rM8",
        "SECURE_HTTPS": "1",
        "ALLOWED_HOSTS": "imagegen.example.org",
        "DATA_DIR": "/tmp",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_the_default_settings_are_not_production_ready_and_the_check_says_so():
    env = {**BARE, "SECRET_KEY": "short", "DATA_DIR": "/tmp"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "SECURE_HSTS_SECONDS" in result.stderr + result.stdout


def test_a_database_url_only_in_the_env_file_is_the_database_migrate_and_the_web_use(tmp_path):
    data_dir, db_path = tmp_path / "data", tmp_path / "elsewhere.sqlite3"
    env_file = tmp_path / ".env"
    env_file.write_text(f"DATABASE_URL=sqlite:///{db_path}\n")
    env = {**BARE, "IMAGEGEN_ENV_FILE": str(env_file), "SECRET_KEY": "k", "DATA_DIR": str(data_dir)}
    migrate = subprocess.run(
        ["scripts/manage.sh", "migrate", "--noinput", "-v0"], cwd=BASE_DIR, env=env, capture_output=True, text=True
    )
    assert migrate.returncode == 0, migrate.stderr
    # What the web process's settings open is the database that was migrated.
    web = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-v0",
            "-c",
            "from django.db import connection; from generation.models import ImageJob;"
            " print(connection.settings_dict['NAME'], ImageJob.objects.count())",
        ],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
    )
    assert web.returncode == 0, web.stderr
    assert web.stdout.split() == [str(db_path), "0"]
    assert not (data_dir / "db.sqlite3").exists()


def test_a_bad_value_in_the_env_file_stops_start_up_naming_the_variable(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("IMAGEGEN_TIMEOUT_SECONDS=soon\n")
    env = {**BARE, "IMAGEGEN_ENV_FILE": str(env_file), "SECRET_KEY": "k", "DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=BASE_DIR, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured: IMAGEGEN_TIMEOUT_SECONDS must be an integer, got 'soon'" in result.stderr


def test_the_real_environment_wins_over_the_env_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("IMAGEGEN_TIMEOUT_SECONDS=soon\nIMAGEGEN_MAX_ATTEMPTS=7\n")
    env = {"IMAGEGEN_ENV_FILE": str(env_file), "SECRET_KEY": "k", "IMAGEGEN_TIMEOUT_SECONDS": "90"}
    result = _settings_in_child(env, "s.IMAGEGEN_TIMEOUT_SECONDS, s.IMAGEGEN_MAX_ATTEMPTS")
    assert result.stdout.split() == ["90", "7"], result.stderr


def test_the_tests_never_read_the_projects_own_env_file(monkeypatch):
    from imagegen_site import envfile

    monkeypatch.delenv("IMAGEGEN_ENV_FILE", raising=False)
    assert envfile.env_file() is None
    assert site_settings.ENV_FILE is None
