"""Settings for Imagegen, read from the environment and the project's `.env` file.

Every variable is listed in `.env.example`. Real environment variables win over `.env`
(see `imagegen_site/envfile.py`), so `make run`, `scripts/manage.sh`, the clusters and
`manage.py` itself all see the same values. The defaults need nothing installed or
started: SQLite (WAL), django-q2's ORM broker and an in-process channel layer.
`DATABASE_URL` switches to PostgreSQL; `REDIS_URL` switches the channel layer and
the task broker to Redis.
"""

import os
import sys
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from redis.exceptions import ConnectionError as RedisConnectionError

from imagegen_site.envfile import load_env_file

BASE_DIR = Path(__file__).resolve().parent.parent
# Before any variable is read: the helpers below read os.environ only.
ENV_FILE = load_env_file()

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value is None else value


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    return _env_number(name, default, int, "an integer", minimum)


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    return _env_number(name, default, float, "a number", minimum)


def _env_number(name, default, kind, described, minimum):
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        number = kind(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be {described}, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_named_sources(name: str, *, what: str, shape: str, check_source, valid_name=bool, reserved=()) -> dict:
    """Parse `name=source[;option...],...` entries (models, LoRAs) into a dict, each
    source checked by `check_source` (a ValueError says what is wrong with it)."""
    entries: dict[str, str] = {}
    for item in env_list(name, []):
        key, sep, spec = (part.strip() for part in item.partition("="))
        if not sep or not valid_name(key) or not spec:
            raise ImproperlyConfigured(f"{name} entries must look like {shape}, got {item!r}")
        if key in reserved:
            raise ImproperlyConfigured(f"{name}: the name {key!r} is reserved for the built-in {what}")
        try:
            check_source(spec)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name}: {what} {key!r}: {exc}") from None
        entries[key] = spec
    return entries


def env_loras(name: str) -> dict[str, str]:
    """Parse `name=/path/file.safetensors[;family=...],...` into a dict of registered LoRAs."""
    from generation.loras import NAME, parse_source

    shape = "name=/path/to/lora.safetensors"
    return env_named_sources(name, what="LoRA", shape=shape, check_source=parse_source, valid_name=NAME.match)


def env_models(name: str) -> dict[str, str]:
    """Parse `name=source[;option...],name2=source2` into a dict of extra models.

    A source is a local diffusers folder, a single `.safetensors` file or a Hub id
    (`org/name[@revision]`); options are `offload`, `family=...`, `config=...`
    (generation/sources.py).
    """
    from generation.sources import parse_spec

    shape = "name=/path/to/model or name=org/model-id"
    return env_named_sources(name, what="model", shape=shape, check_source=parse_spec, reserved=("demo",))


DEBUG = env_bool("DEBUG", False)

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "insecure-development-key-only-used-with-debug-on"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# Behind HTTPS (a TLS-terminating proxy in production): secure cookies, HSTS and
# redirects to https. Off by default so `make run` works on plain http://127.0.0.1.
SECURE_HTTPS = env_bool("SECURE_HTTPS", False)
if SECURE_HTTPS:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# Where the embedded database, generated images, locks and the demo model live.
DATA_DIR = Path(env_str("DATA_DIR", str(BASE_DIR / "var"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_q",
    "chat",
    "generation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "imagegen_site.middleware.StaticFilesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, so that its process_exception sees a view's exception first.
    "imagegen_site.middleware.DatabaseOutageMiddleware",
]

ROOT_URLCONF = "imagegen_site.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = None
ASGI_APPLICATION = "imagegen_site.asgi.application"
# How many threads of a web process run requests' sync code (views, middleware, the
# database); more requests at once wait for one, holding nothing. Waiting API requests
# hold none. More threads than this fight over the process's one core for Python.
WEB_THREADS = env_int("WEB_THREADS", 8, minimum=1)

# --- Database -------------------------------------------------------------------

DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    try:
        DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0, conn_health_checks=True)}
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # libpq gives up on a connection attempt after this many seconds (2 at least), in
        # every process: a database host that is down or cut off, dropping packets rather
        # than refusing them, fails in seconds instead of after TCP's minutes. A
        # `connect_timeout` in DATABASE_URL wins.
        DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
            "connect_timeout", env_int("DATABASE_CONNECT_TIMEOUT", 3, minimum=2)
        )
        # A connection already open to a host that then drops packets would wait for
        # TCP to give up (about 15 minutes): keepalives notice a silent peer within
        # about 10 s, and unacknowledged writes fail after 10 s.
        for option, value in {
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": 10_000,  # milliseconds
        }.items():
            DATABASES["default"]["OPTIONS"].setdefault(option, value)
    # Without a pool every request opens a connection of its own and closes it, so a
    # burst of requests opens a burst of connections. The web process borrows from a
    # pool instead; a request waits up to DATABASE_POOL_TIMEOUT seconds for a connection.
    # Never in a django-q2 cluster: its workers are forked, and a pool's connections and
    # threads must not cross a fork.
    DATABASE_POOL_MAX_SIZE = env_int("DATABASE_POOL_MAX_SIZE", 0, minimum=0)
    in_cluster = sys.argv[1:2] == ["qcluster"]
    if DATABASE_POOL_MAX_SIZE and not in_cluster and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # The threads that hold connections, WEB_THREADS (8) for pages,
        # IMAGEGEN_API_DB_THREADS (4) for the APIs and one for the WebSockets, are fewer
        # than the Procfile's 20, so a request never waits for another's connection: it
        # waits only while the pool cannot open one, that is while the database is away.
        # The timeout is then how long a request hangs before its 503, so it is short:
        # about one connection attempt, where a healthy database answers in milliseconds.
        # The pool checks each connection before lending it (Django passes psycopg_pool
        # `check=ConnectionPool.check_connection` because CONN_HEALTH_CHECKS is on), so a
        # connection a restart broke is replaced, never handed to a request.
        pool_timeout = env_float("DATABASE_POOL_TIMEOUT", 3.0, minimum=1.0)
        DATABASES["default"]["OPTIONS"]["pool"] = {
            "min_size": 1,
            "max_size": DATABASE_POOL_MAX_SIZE,
            "timeout": pool_timeout,
            # After a failed attempt the pool tries again in the background, each pause
            # twice the last (1, 2, 4... s), for reconnect_timeout seconds, then leaves it
            # to the next request that waits. With psycopg_pool's five minutes, the next
            # try came 13 s after a 45 s outage ended, and each request until then got a
            # 503; trying only as long as a request waits, it comes within 2 s.
            "reconnect_timeout": pool_timeout,
        }
else:
    SQLITE_PATH = Path(env_str("SQLITE_PATH", str(DATA_DIR / "db.sqlite3")))
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": SQLITE_PATH,
            "OPTIONS": {
                # The web server, the GPU worker and the maintenance worker all write:
                # WAL lets readers run beside the writer, IMMEDIATE takes the write
                # lock when a transaction starts (so a read-modify-write never fails
                # half-way with "database is locked"), and the timeout makes writers
                # queue for the lock instead of failing.
                "transaction_mode": "IMMEDIATE",
                "timeout": env_float("SQLITE_BUSY_TIMEOUT", 30.0, minimum=0),
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            # Tests use a file, not memory: worker processes and threads in the tests
            # need their own connections to the same database.
            "TEST": {"NAME": str(DATA_DIR / "test-db.sqlite3")},
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: channel layer and task broker ---------------------------------------

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    # Seconds to connect before giving up (redis-py waits 5): a Redis that is down or
    # cut off fails a request, a health check or a cluster's read within a second.
    REDIS_CONNECT_TIMEOUT = 1
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        # redis-py 8 reads with a 5 s socket timeout by default, the same
                        # as channels-redis' 5 s blocking pop: an idle consumer would then
                        # fail with "Timeout reading". The read timeout must be above the pop's.
                        "socket_timeout": 30,
                        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
                        # A web process keeps its connections in a pool per event loop;
                        # after Redis restarts, each one fails its next command ("Connection
                        # closed by server"). redis-py then reconnects and sends it again.
                        "retry_on_error": [RedisConnectionError],
                    }
                ],
                "prefix": env_str("CHANNELS_PREFIX", "imagegen"),
            },
        }
    }
    # django-q2 takes a URL: the connect timeout goes in its query (the URL's own wins).
    _redis_url = urlsplit(REDIS_URL)
    _redis_query = {"socket_connect_timeout": str(REDIS_CONNECT_TIMEOUT), **dict(parse_qsl(_redis_url.query))}
    REDIS_BROKER_URL = urlunsplit(_redis_url._replace(query=urlencode(_redis_query)))
else:
    # Events cross from the worker processes to the web process through a SQLite
    # file of their own (channels-lite), so the embedded default needs no Redis.
    DATABASES["channels"] = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": Path(env_str("CHANNELS_SQLITE_PATH", str(DATA_DIR / "channels.sqlite3"))),
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 10,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
        "TEST": {"NAME": str(DATA_DIR / "test-channels.sqlite3")},
    }
    DATABASE_ROUTERS = ["imagegen_site.routers.ChannelLayerRouter"]
    INSTALLED_APPS.append("channels_lite")
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_lite.layers.core.SQLiteChannelLayer",
            "CONFIG": {
                "database": "channels",
                "polling_interval": env_float("CHANNELS_POLL_SECONDS", 0.05, minimum=0.005),
                "expiry": 60,
                "capacity": 500,
            },
        }
    }

# --- Generation ------------------------------------------------------------------

# Extra models besides `demo`: "name=/path/to/diffusers-folder,other=/path/model.safetensors,
# flux=black-forest-labs/FLUX.1-dev;offload" (see docs/models.md).
IMAGEGEN_MODELS = env_models("IMAGEGEN_MODELS")
IMAGEGEN_DEFAULT_MODEL = env_str("IMAGEGEN_DEFAULT_MODEL", "demo")
if IMAGEGEN_DEFAULT_MODEL != "demo" and IMAGEGEN_DEFAULT_MODEL not in IMAGEGEN_MODELS:
    raise ImproperlyConfigured(f"IMAGEGEN_DEFAULT_MODEL {IMAGEGEN_DEFAULT_MODEL!r} is not in IMAGEGEN_MODELS")
IMAGEGEN_MODEL_CACHE = Path(env_str("IMAGEGEN_MODEL_CACHE", str(DATA_DIR / "models")))
# LoRAs (generation/loras.py): every .safetensors file in this folder, and registered ones
# ("name=/path/file.safetensors[;family=sdxl]", comma-separated).
IMAGEGEN_LORA_DIR = Path(env_str("IMAGEGEN_LORA_DIR", str(DATA_DIR / "loras")))
IMAGEGEN_LORAS = env_loras("IMAGEGEN_LORAS")
# How many LoRAs the worker keeps loaded as adapters (the least recently used goes first).
IMAGEGEN_LORA_CACHE = env_int("IMAGEGEN_LORA_CACHE", 8, minimum=1)
IMAGEGEN_DEVICE = env_str("IMAGEGEN_DEVICE", "auto")
IMAGEGEN_TIMEOUT_SECONDS = env_int("IMAGEGEN_TIMEOUT_SECONDS", 180, minimum=1)
IMAGEGEN_MAX_ATTEMPTS = env_int("IMAGEGEN_MAX_ATTEMPTS", 3, minimum=1)
IMAGEGEN_RETRY_BASE_SECONDS = env_float("IMAGEGEN_RETRY_BASE_SECONDS", 2.0, minimum=0)
IMAGEGEN_GPU_LOCK_WAIT_SECONDS = env_float("IMAGEGEN_GPU_LOCK_WAIT_SECONDS", 30.0, minimum=0)
IMAGEGEN_LOCK_DIR = Path(env_str("IMAGEGEN_LOCK_DIR", str(DATA_DIR / "locks")))
IMAGEGEN_BREAKER_THRESHOLD = env_int("IMAGEGEN_BREAKER_THRESHOLD", 5, minimum=1)
IMAGEGEN_BREAKER_COOLDOWN_SECONDS = env_float("IMAGEGEN_BREAKER_COOLDOWN_SECONDS", 60.0, minimum=0)
IMAGEGEN_HEARTBEAT_SECONDS = env_float("IMAGEGEN_HEARTBEAT_SECONDS", 10.0, minimum=0.1)
# The stuck-job guard fails a processing job with no heartbeat for this long.
IMAGEGEN_STUCK_AFTER_SECONDS = env_int("IMAGEGEN_STUCK_AFTER_SECONDS", 300, minimum=1)
# ETA before there is any history: seconds per step of a 512x512 image. Only the last
# resort: a gpu worker measures its default model when it starts (IMAGEGEN_WARMUP).
IMAGEGEN_DEFAULT_SECONDS_PER_STEP = env_float("IMAGEGEN_DEFAULT_SECONDS_PER_STEP", 0.5, minimum=0.001)
# A gpu worker, once started, loads IMAGEGEN_DEFAULT_MODEL and times two short passes
# (a tiny image, then one at the model's default size, three steps each), so that the
# first jobs' ETAs are measured rather than guessed; no job or image comes of them.
IMAGEGEN_WARMUP = env_bool("IMAGEGEN_WARMUP", True)
# The order the worker takes queued jobs in: "fifo" (first come, first served) or
# "fair" (each user's share of GPU time, by the jobs' estimated seconds and the users'
# weights: generation/fairness.py).
IMAGEGEN_QUEUE_POLICY = (env_str("IMAGEGEN_QUEUE_POLICY", "fifo") or "fifo").strip().lower()
if IMAGEGEN_QUEUE_POLICY not in ("fifo", "fair"):
    raise ImproperlyConfigured(f"IMAGEGEN_QUEUE_POLICY must be fifo or fair, got {IMAGEGEN_QUEUE_POLICY!r}")
IMAGEGEN_MAX_PENDING_PER_USER = env_int("IMAGEGEN_MAX_PENDING_PER_USER", 10, minimum=1)
# New prompts are refused (503) while the images' disk has less free space than this
# (MB): no image could be stored. 0: never.
IMAGEGEN_MIN_FREE_DISK_MB = env_int("IMAGEGEN_MIN_FREE_DISK_MB", 100, minimum=0)
# At most this many prompts per user per minute.
IMAGEGEN_SUBMISSIONS_PER_MINUTE = env_int("IMAGEGEN_SUBMISSIONS_PER_MINUTE", 30, minimum=1)

# GPU worker processes register as rows and beat this often (also while loading a
# model); one silent for DEAD_AFTER seconds is dead and the guard requeues its job.
IMAGEGEN_WORKER_BEAT_SECONDS = env_float("IMAGEGEN_WORKER_BEAT_SECONDS", 5.0, minimum=0.1)
IMAGEGEN_WORKER_DEAD_AFTER_SECONDS = env_float("IMAGEGEN_WORKER_DEAD_AFTER_SECONDS", 20.0, minimum=1)
# A file whose existence tells this cluster's workers to stop: they claim nothing more
# and hand a running job back unless it ends within IMAGEGEN_STOP_GRACE_SECONDS.
# scripts/qcluster.sh sets it and creates it on SIGTERM/SIGINT; empty: never asked.
IMAGEGEN_STOP_FILE = os.environ.get("IMAGEGEN_STOP_FILE", "")
IMAGEGEN_STOP_GRACE_SECONDS = env_float("IMAGEGEN_STOP_GRACE_SECONDS", 1.5, minimum=0)

# Retention, run by the maintenance cluster's prune task: image files no job owns are
# removed once they are this old (younger ones may belong to a job completing now), and
# finished django-q2 tasks are kept this long.
IMAGEGEN_ORPHAN_FILE_AGE_SECONDS = env_int("IMAGEGEN_ORPHAN_FILE_AGE_SECONDS", 3600, minimum=60)
IMAGEGEN_TASK_RETENTION_HOURS = env_float("IMAGEGEN_TASK_RETENTION_HOURS", 24.0, minimum=0)

# The GPU worker runs queued jobs back to back in one task for up to this long, so no
# broker round trip sits between two jobs; then it rings itself and starts afresh.
IMAGEGEN_DRAIN_SECONDS = env_float("IMAGEGEN_DRAIN_SECONDS", 60.0, minimum=0)
# How many images one pass of the pipeline may make (0: 4 on CUDA, 1 on a CPU), and
# how many places behind the head of the queue a job may be to join the head's pass.
IMAGEGEN_MAX_BATCH = env_int("IMAGEGEN_MAX_BATCH", 0, minimum=0)
IMAGEGEN_BATCH_WINDOW = env_int("IMAGEGEN_BATCH_WINDOW", 8, minimum=0)
# Free the loaded model (and its GPU memory) after this many seconds with nothing queued;
# the next job loads it again. 0: keep it loaded.
IMAGEGEN_UNLOAD_AFTER_SECONDS = env_float("IMAGEGEN_UNLOAD_AFTER_SECONDS", 0.0, minimum=0)
# Queue broadcasts (positions and ETAs of waiting jobs) are at least this far apart.
IMAGEGEN_BROADCAST_INTERVAL_SECONDS = env_float("IMAGEGEN_BROADCAST_INTERVAL_SECONDS", 0.25, minimum=0)
# What makes the images: empty for the diffusers pipeline, or the dotted path of a
# class with the same interface (the benchmarks' zero-cost generator, test doubles).
IMAGEGEN_GENERATOR = env_str("IMAGEGEN_GENERATOR", "")

# A hard timeout above our own soft one (a task may also wait out the breaker's
# cool-down, and drains the queue for up to IMAGEGEN_DRAIN_SECONDS before its last
# job), and a broker retry well above the longest task, so django-q2 never
# re-delivers a task that is still running.
IMAGEGEN_HARD_TIMEOUT_SECONDS = env_int(
    "IMAGEGEN_HARD_TIMEOUT_SECONDS",
    IMAGEGEN_TIMEOUT_SECONDS + int(IMAGEGEN_BREAKER_COOLDOWN_SECONDS) + int(IMAGEGEN_DRAIN_SECONDS) + 120,
    minimum=1,
)
_HARD_TIMEOUT = IMAGEGEN_HARD_TIMEOUT_SECONDS

Q_CLUSTER = {
    "name": "imagegen",
    "workers": 1,
    "timeout": 120,
    "retry": 300,
    "max_attempts": 2,
    "save_limit": 500,
    "catch_up": False,
    "ack_failures": True,
    "sync": env_bool("Q_SYNC", False),
    "ALT_CLUSTERS": {
        # Owns the pipeline: one worker that never recycles, so the model stays loaded.
        "gpu": {
            "workers": 1,
            "recycle": 1_000_000,
            "timeout": _HARD_TIMEOUT,
            "retry": max(_HARD_TIMEOUT * 3, 600),
            "scheduler": False,
        },
        "maintenance": {
            "workers": 1,
            "timeout": 120,
            "retry": 300,
        },
    },
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_BROKER_URL
else:
    Q_CLUSTER["orm"] = "default"
    Q_CLUSTER["poll"] = env_float("Q_POLL_SECONDS", 0.2, minimum=0.01)

# Each cluster's pusher waits out an outage of Redis or the database (generation/brokers.py).
Q_CLUSTER["broker_class"] = "generation.brokers.PatientRedis" if REDIS_URL else "generation.brokers.PatientORM"

# --- HTTP APIs (OpenAI Images at /v1/, AUTOMATIC1111 at /sdapi/v1/) -----------------

# A waiting API request's jobs are looked up (all waiting requests in one query) this often.
IMAGEGEN_API_POLL_SECONDS = env_float("IMAGEGEN_API_POLL_SECONDS", 0.5, minimum=0.05)
# Threads (and so at most database connections) the web process uses for API requests.
IMAGEGEN_API_DB_THREADS = env_int("IMAGEGEN_API_DB_THREADS", 4, minimum=1)
# An OpenAI `response_format=url` link works this long.
IMAGEGEN_API_URL_SECONDS = env_int("IMAGEGEN_API_URL_SECONDS", 3600, minimum=60)
# An edit's source image may be 20 MB (generation/uploads.py); an AUTOMATIC1111 request
# sends it and its mask as base64 text in one JSON body (4/3 of their size).
DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 2**20

# --- Operations -------------------------------------------------------------------

# /metrics answers a request with `Authorization: Bearer <IMAGEGEN_METRICS_TOKEN>` (when
# set) or from an address in IMAGEGEN_METRICS_ALLOWED_IPS (addresses or networks).
IMAGEGEN_METRICS_TOKEN = env_str("IMAGEGEN_METRICS_TOKEN", "")


def env_networks(name: str, default: list[str]) -> list:
    import ipaddress

    try:
        return [ipaddress.ip_network(item, strict=False) for item in env_list(name, default)]
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must list IP addresses or networks: {exc}") from None


IMAGEGEN_METRICS_ALLOWED_IPS = env_networks("IMAGEGEN_METRICS_ALLOWED_IPS", ["127.0.0.1", "::1"])

# --- Auth, static, media ---------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Generated images live here and are served only through an access-checked view.
MEDIA_ROOT = DATA_DIR / "media"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    # While the database or Redis is away, a traceback per failed write becomes one line
    # when the outage starts and one when it ends (generation/outages.py).
    "filters": {"outages": {"()": "generation.outages.OutageLogFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["outages"]}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # psycopg's pool warns at every failed reconnection attempt while the database is
    # away; the outage is logged once by the request that meets it.
    "loggers": {"psycopg.pool": {"level": "ERROR"}},
}
