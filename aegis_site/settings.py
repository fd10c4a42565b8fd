"""Aegis Event Bus settings: one file, everything from the environment.

Defaults make the all-in-one mode work with no environment at all (SQLite in
``var/``, in-memory channel layer, local-memory cache). Every secret can also be
given as ``NAME_FILE`` pointing at a file (Docker/Kubernetes secrets). Bad values
fail here, at start, with a message that names the variable.
"""

from __future__ import annotations

import ipaddress
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.FileAwareEnv()


def _positive_int(name: str, default: int, minimum: int = 1) -> int:
    try:
        value = env.int(name, default=default)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {env.str(name)!r}") from exc
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {value}")
    return value


def _positive_float(name: str, default: float, zero_ok: bool = False) -> float:
    try:
        value = env.float(name, default=default)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, got {env.str(name)!r}") from exc
    if value < 0 or (value == 0 and not zero_ok):
        raise ImproperlyConfigured(f"{name} must be {'>=' if zero_ok else '>'} 0, got {value}")
    return value


DEBUG = env.bool("DEBUG", default=True)
DATA_DIR = Path(env.str("DATA_DIR", default=str(BASE_DIR / "var")))


def _secret_key() -> str:
    configured = env.str("SECRET_KEY", default="")
    if configured:
        return configured
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) must be set when DEBUG is off.")
    # A generated development key, kept in DATA_DIR so sessions survive restarts;
    # the system check ``aegis.W001`` warns about it on every start.
    key_file = DATA_DIR / ".dev_secret_key"
    if not key_file.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY_IS_GENERATED = not env.str("SECRET_KEY", default="")
SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "ops",  # before health_check: its health_check command (ops/management/commands) replaces the library's
    "health_check",
    "django_prometheus",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "axes",
    "aegis_site.core",  # the ground floor: audit log, role heartbeats (docs/architecture.md)
    "registry",
    "tasks",
    "broker",
    "notify",
    "aegis_site",  # last: its ready() installs the API kit once every app is loaded
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "ops.metrics.middleware.RequestContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "aegis_site.request_limits.RefuseNulMiddleware",  # NUL in a URL: a 400 before any view or query
    *([] if DEBUG else ["aegis_site.static_files.AsyncWhiteNoiseMiddleware"]),  # static files in production, see below
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
    "axes.middleware.AxesMiddleware",  # a locked-out login answers 429 (ops.logins.lockout_response)
]

ROOT_URLCONF = "aegis_site.urls"
ASGI_APPLICATION = "aegis_site.asgi.application"

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


# --- Database -----------------------------------------------------------------

DEFAULT_DATABASE_URL = f"sqlite:///{DATA_DIR / 'aegis.sqlite3'}"


def _database() -> dict[str, Any]:
    url = env.str("DATABASE_URL", default=DEFAULT_DATABASE_URL)
    scheme = urlsplit(url).scheme
    if scheme not in {"sqlite", "postgres", "postgresql", "pgsql"}:
        raise ImproperlyConfigured(f"DATABASE_URL must start with sqlite:// or postgres://, got scheme {scheme!r}")
    config: dict[str, Any] = dict(env.db_url_config(url))
    if config["ENGINE"] == "django.db.backends.sqlite3":
        if config["NAME"] != ":memory:":
            Path(config["NAME"]).parent.mkdir(parents=True, exist_ok=True)
        config["OPTIONS"] = {
            # BEGIN IMMEDIATE: a writer takes the lock at BEGIN, so two claimers
            # never both read the same queued row and then collide on upgrade.
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
        # Tests use a file too: an in-memory shared-cache database raises "table is locked"
        # when the bridge's and the dispatcher's threads write at once, where WAL just waits.
        config["TEST"] = {"NAME": env.str("SQLITE_TEST_NAME", default=str(DATA_DIR / "test_aegis.sqlite3"))}
        return config
    config["ENGINE"] = "aegis_site.postgresql"  # Django's, with a pool that recovers at once (see the module)
    # Django's cursors bind on the client and are never prepared; this lets the claim's hot path
    # (tasks/engine/claim_pg.py) prepare its statements. Off for a pooler in transaction mode.
    config["OPTIONS"] = {"prepare_threshold": 5 if env.bool("DB_PREPARED_STATEMENTS", default=True) else None}
    pool_size = _positive_int("DB_POOL_SIZE", 4, minimum=0)
    if pool_size:
        config["CONN_MAX_AGE"] = 0  # the pool owns connection lifetime
        # Every checkout checks the connection (one round trip): one whose backend was terminated (failover,
        # restart, pg_terminate_backend) is replaced instead of failing the request that got it, and the
        # backend sweeps the pool's other idle connections at once (aegis_site/postgresql).
        config["CONN_HEALTH_CHECKS"] = True
        config["OPTIONS"]["pool"] = {
            "min_size": pool_size,
            "max_size": pool_size + _positive_int("DB_MAX_OVERFLOW", 4, minimum=0),
            "timeout": _positive_float("DB_POOL_TIMEOUT", 10.0),
        }
    else:
        config["CONN_MAX_AGE"] = _positive_int("DB_CONN_MAX_AGE", 60, minimum=0)
    return config


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


# --- Redis, cache, channel layer, MQTT ---------------------------------------------

REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL and urlsplit(REDIS_URL).scheme not in {"redis", "rediss", "unix"}:
    raise ImproperlyConfigured(f"REDIS_URL must be a redis:// or rediss:// URL, got {REDIS_URL!r}")

if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    # redis-py 8 gives every socket a 5 s read timeout, exactly channels_redis's BRPOP wait: an idle
    # receive (the bridge's consumer, a quiet websocket) then dies with TimeoutError. Keep a bound, longer.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30}]},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

MQTT_URL = env.str("MQTT_URL", default="")
if MQTT_URL and urlsplit(MQTT_URL).scheme not in {"mqtt", "mqtts"}:
    raise ImproperlyConfigured(f"MQTT_URL must be an mqtt:// or mqtts:// URL, got {MQTT_URL!r}")
# TLS material of the bridge (mqtts://): the CA that signed the broker, and the bridge's own certificate.
MQTT_CA_FILE = env.str("MQTT_CA_FILE", default="")
MQTT_CERT_FILE = env.str("MQTT_CERT_FILE", default="")
MQTT_KEY_FILE = env.str("MQTT_KEY_FILE", default="")
MQTT_PROTOCOL = env.str("MQTT_PROTOCOL", default="5")
if MQTT_PROTOCOL not in {"5", "3.1.1"}:
    raise ImproperlyConfigured(f"MQTT_PROTOCOL must be 5 or 3.1.1, got {MQTT_PROTOCOL!r}")
# Default aegis-bridge-<hostname>; the dispatcher appends -dispatcher-<pid>. With the generated broker
# configuration it must start with "aegis-bridge-" (the aegis_auth plugin binds client ids to certificates).
MQTT_CLIENT_ID = env.str("MQTT_CLIENT_ID", default="")
MQTT_SHARE_GROUP = env.str("MQTT_SHARE_GROUP", default="aegis")
MQTT_SESSION_EXPIRY = _positive_int("MQTT_SESSION_EXPIRY", 3600)
MQTT_RECEIVE_MAXIMUM = _positive_int("MQTT_RECEIVE_MAXIMUM", 1000)
BRIDGE_BATCH_SIZE = _positive_int("BRIDGE_BATCH_SIZE", 200)
BRIDGE_LINGER_MS = _positive_float("BRIDGE_LINGER_MS", 2.0, zero_ok=True)
BRIDGE_HEARTBEAT_FLUSH_INTERVAL = _positive_float("BRIDGE_HEARTBEAT_FLUSH_INTERVAL", 1.0)
BRIDGE_OUTBOX_POLL_INTERVAL = _positive_float("BRIDGE_OUTBOX_POLL_INTERVAL", 0.5)
# The dispatcher publishes its assignments itself; the bridge republishes what is still unsent after this.
OUTBOX_HANDOFF_GRACE = _positive_float("OUTBOX_HANDOFF_GRACE", 5.0)
DISPATCHER_PUBLISH = env.bool("DISPATCHER_PUBLISH", default=True)


# --- Queue engine ------------------------------------------------------------------

# How often the dispatcher wakes when nothing notifies it (seconds).
DISPATCHER_POLL_INTERVAL = _positive_float("DISPATCHER_POLL_INTERVAL", 1.0)
# Most tasks one dispatcher step assigns to one agent / expires in one transaction.
DISPATCHER_BATCH_SIZE = _positive_int("DISPATCHER_BATCH_SIZE", 100)
# Agents are expected to heartbeat this often; after this many missed intervals
# the dispatcher marks them offline.
AGENT_HEARTBEAT_INTERVAL = _positive_float("AGENT_HEARTBEAT_INTERVAL", 15.0)
AGENT_OFFLINE_AFTER_MISSED = _positive_int("AGENT_OFFLINE_AFTER_MISSED", 3)
# Defaults for a job's policy when the submitter does not give one.
TASK_DEFAULT_MAX_ATTEMPTS = _positive_int("TASK_DEFAULT_MAX_ATTEMPTS", 3)
TASK_DEFAULT_DELIVERY_TIMEOUT = _positive_int("TASK_DEFAULT_DELIVERY_TIMEOUT", 60)
TASK_DEFAULT_EXECUTION_TIMEOUT = _positive_int("TASK_DEFAULT_EXECUTION_TIMEOUT", 600)
TASK_DEFAULT_BACKOFF_BASE = _positive_float("TASK_DEFAULT_BACKOFF_BASE", 5.0)
TASK_DEFAULT_BACKOFF_CAP = _positive_float("TASK_DEFAULT_BACKOFF_CAP", 600.0)
# Task output (``task.log``) kept per attempt and per task, in bytes; past a cap the output ends with a
# "truncated" marker (docs/task-output.md).
TASK_LOG_MAX_BYTES_PER_ATTEMPT = _positive_int("TASK_LOG_MAX_BYTES_PER_ATTEMPT", 64 * 1024 * 1024)
TASK_LOG_MAX_BYTES_PER_TASK = _positive_int("TASK_LOG_MAX_BYTES_PER_TASK", 256 * 1024 * 1024)
TASK_LOG_MAX_FOLLOWERS = _positive_int("TASK_LOG_MAX_FOLLOWERS", 200)  # readers following output per process; more: 503
# A follow answers no sooner than this after it began (unless the page is full): one answer per this, not per commit.
TASK_LOG_FOLLOW_GATHER_S = _positive_float("TASK_LOG_FOLLOW_GATHER_S", 0.25)

# Notifications (docs/notifications.md): webhooks, Slack-compatible webhooks and e-mail, sent by run_notifier.
NOTIFY_DELIVERY_TIMEOUT_S = _positive_float("NOTIFY_DELIVERY_TIMEOUT_S", 10.0)  # one HTTP request or SMTP send
NOTIFY_LEASE_S = _positive_float("NOTIFY_LEASE_S", 60.0)  # a delivery being sent; a dead notifier's comes back then
NOTIFY_DEADLINE_S = _positive_float("NOTIFY_DEADLINE_S", 24 * 3600.0)  # failing past this: dead-lettered
NOTIFY_BACKOFF_BASE_S = _positive_float("NOTIFY_BACKOFF_BASE_S", 5.0)
NOTIFY_BACKOFF_CAP_S = _positive_float("NOTIFY_BACKOFF_CAP_S", 3600.0)
NOTIFY_POLL_INTERVAL_S = _positive_float("NOTIFY_POLL_INTERVAL_S", 1.0)  # besides the NOTIFY wakeup
NOTIFY_BATCH_SIZE = _positive_int("NOTIFY_BATCH_SIZE", 20)  # deliveries one notifier takes at a time
NOTIFY_ALLOW_PRIVATE_ADDRESSES = env.bool("NOTIFY_ALLOW_PRIVATE_ADDRESSES", default=False)  # loopback, RFC 1918...
NOTIFY_DIGEST_WINDOW_S = _positive_float("NOTIFY_DIGEST_WINDOW_S", 60.0)  # task.failed of one job: one digest
NOTIFY_CERT_EXPIRY_WARN_DAYS = _positive_int("NOTIFY_CERT_EXPIRY_WARN_DAYS", 14)
NOTIFY_STUCK_AFTER_S = _positive_float("NOTIFY_STUCK_AFTER_S", 900.0)  # in the reconciliation view this long
NOTIFY_EMAIL_FROM = env.str("NOTIFY_EMAIL_FROM", default="aegis@localhost")
# E-mail notifications go through Django's SMTP backend with these (a password may come from EMAIL_HOST_PASSWORD_FILE).
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)  # STARTTLS
EMAIL_USE_SSL = env.bool("EMAIL_USE_SSL", default=False)  # implicit TLS (port 465)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL are exclusive: STARTTLS or implicit TLS, not both.")


# --- Task artifacts (files tasks produce; docs/artifacts.md) --------------------------------

# Where the files go: "local" (a directory, served by the web role through signed URLs: the all-in-one)
# or "s3" (any S3-compatible store, e.g. the MinIO of docker-compose.yml, through pre-signed URLs).
TASK_ARTIFACT_STORAGE = env.str("TASK_ARTIFACT_STORAGE", default="local")
if TASK_ARTIFACT_STORAGE not in ("local", "s3"):
    raise ImproperlyConfigured(f"TASK_ARTIFACT_STORAGE must be local or s3, got {TASK_ARTIFACT_STORAGE!r}")
TASK_ARTIFACT_LOCAL_DIR = Path(env.str("TASK_ARTIFACT_LOCAL_DIR", default=str(DATA_DIR / "artifacts")))
TASK_ARTIFACT_S3_ENDPOINT_URL = env.str("TASK_ARTIFACT_S3_ENDPOINT_URL", default="")  # empty: AWS itself
# The address agents and browsers reach the store at, when it differs from the server's (pre-signed URLs name it).
TASK_ARTIFACT_S3_PUBLIC_URL = env.str("TASK_ARTIFACT_S3_PUBLIC_URL", default="") or TASK_ARTIFACT_S3_ENDPOINT_URL
TASK_ARTIFACT_S3_BUCKET = env.str("TASK_ARTIFACT_S3_BUCKET", default="aegis-artifacts")
TASK_ARTIFACT_S3_REGION = env.str("TASK_ARTIFACT_S3_REGION", default="us-east-1")
TASK_ARTIFACT_S3_ACCESS_KEY = env.str("TASK_ARTIFACT_S3_ACCESS_KEY", default="")
TASK_ARTIFACT_S3_SECRET_KEY = env.str("TASK_ARTIFACT_S3_SECRET_KEY", default="")
# How long an upload or download URL works (seconds).
TASK_ARTIFACT_URL_TTL = _positive_int("TASK_ARTIFACT_URL_TTL", 900)
# Limits: one file, all files of a task together (bytes), files per task.
TASK_ARTIFACT_MAX_BYTES = _positive_int("TASK_ARTIFACT_MAX_BYTES", 100 * 1024 * 1024)
TASK_ARTIFACT_MAX_BYTES_PER_TASK = _positive_int("TASK_ARTIFACT_MAX_BYTES_PER_TASK", 1024 * 1024 * 1024)
TASK_ARTIFACT_MAX_COUNT_PER_TASK = _positive_int("TASK_ARTIFACT_MAX_COUNT_PER_TASK", 100)


# --- Auth, i18n, static ------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Password logins (the admin's form and /api/v1/auth/token/) lock out per username and per client address after
# LOGIN_FAILURE_LIMIT failures, for LOGIN_COOLOFF seconds (django-axes, in the database: shared by every replica;
# `manage.py axes_reset_username NAME` unlocks). ops.logins logs each failure and each refusal.
AUTHENTICATION_BACKENDS = ["ops.logins.LockoutBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = _positive_int("LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(seconds=_positive_int("LOGIN_COOLOFF", 900))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # either one locks: not only the pair
AXES_CLIENT_IP_CALLABLE = "aegis_site.client_address.client_address"
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_LOCKOUT_CALLABLE = "ops.logins.lockout_response"
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False  # a lockout ends LOGIN_COOLOFF after it began
AXES_DISABLE_ACCESS_LOG = True  # no row per successful login
AXES_VERBOSE = False
AXES_ENABLE_ADMIN = False  # the axes_* commands list and reset the records (docs/operations.md)

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True
# Times with seconds everywhere in the admin (aegis_site/formats/en/formats.py).
FORMAT_MODULE_PATH = ["aegis_site.formats"]

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(DATA_DIR / "static")))
# With DEBUG off, whitenoise serves STATIC_ROOT from every web process (DEBUG on: asgi.py's static handler).
# Hashed names (cache-busting, cached for a year) need `collectstatic` to have written the manifest, so they
# are switched on where that is certain: the container image sets STATICFILES_MANIFEST=1 and collects at build.
STATICFILES_MANIFEST = env.bool("STATICFILES_MANIFEST", default=False)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if STATICFILES_MANIFEST
        else "whitenoise.storage.CompressedStaticFilesStorage"
    },
}


# --- HTTPS and the reverse proxy ------------------------------------------------------

# HTTPS_ONLY: the site is reached over HTTPS only (TLS at nginx or the Ingress): plain HTTP is redirected,
# cookies are Secure and browsers are told (HSTS) to use HTTPS. On by default when DEBUG is off.
HTTPS_ONLY = env.bool("HTTPS_ONLY", default=not DEBUG)
SECURE_SSL_REDIRECT = HTTPS_ONLY
# Probes and Prometheus talk plain HTTP to the pod/container itself: a redirect would hide the real answer.
SECURE_REDIRECT_EXEMPT = [r"^healthz", r"^metrics"]
SESSION_COOKIE_SECURE = HTTPS_ONLY
CSRF_COOKIE_SECURE = HTTPS_ONLY
SECURE_HSTS_SECONDS = _positive_int("SECURE_HSTS_SECONDS", 31_536_000 if HTTPS_ONLY else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)
# Addresses/networks of the reverse proxies whose X-Forwarded-For/-Proto are believed (aegis_site/client_address.py):
# empty, the default, believes nobody's. The client address of every rate limit, lockout and log line comes from it.
TRUSTED_PROXIES = env.list("TRUSTED_PROXIES", default=[])
for _proxy in TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError as exc:
        raise ImproperlyConfigured(f"TRUSTED_PROXIES: {_proxy!r} is not an address or a network") from exc
# Only for a server other than daphne behind a proxy that overwrites X-Forwarded-Proto; with daphne,
# TRUSTED_PROXIES already takes the scheme from the proxies it names (and from no one else).
if env.bool("SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
USE_X_FORWARDED_HOST = env.bool("USE_X_FORWARDED_HOST", default=False)


# --- HTTP API ----------------------------------------------------------------------

API_PAGE_SIZE = _positive_int("API_PAGE_SIZE", 50)
API_MAX_PAGE_SIZE = _positive_int("API_MAX_PAGE_SIZE", 500)
API_MAX_BODY_BYTES = _positive_int("API_MAX_BODY_BYTES", 1_048_576)
API_CLAIM_MAX_WAIT = _positive_float("API_CLAIM_MAX_WAIT", 30.0)  # longest long-poll of an agent's claim
API_CLAIM_MAX_WAITS_PER_AGENT = _positive_int("API_CLAIM_MAX_WAITS_PER_AGENT", 2)  # more at once: 429
API_THROTTLE_RATES = {
    "anon": env.str("API_THROTTLE_ANON", default="60/min"),
    "agent": env.str("API_THROTTLE_AGENT", default="1200/min"),
    "operator": env.str("API_THROTTLE_OPERATOR", default="600/min"),
    "enrol": env.str("API_THROTTLE_ENROL", default="10/min"),
    "auth": env.str("API_THROTTLE_AUTH", default="20/min"),
    # Failed credentials (a bad token or JWT) per client address; past it every credential from there gets 429.
    "auth_failure": env.str("API_THROTTLE_AUTH_FAILURES", default="20/min"),
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "registry.api.authentication.AgentTokenAuthentication",
        "ops.api.authentication.OperatorTokenAuthentication",
        "registry.api.authentication.AegisJWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["aegis_site.api.permissions.IsOperator"],
    "DEFAULT_PARSER_CLASSES": ["aegis_site.api.parsers.LimitedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "aegis_site.api.pagination.CursorPage",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_THROTTLE_CLASSES": ["aegis_site.api.throttling.ClientThrottle"],
    "DEFAULT_THROTTLE_RATES": API_THROTTLE_RATES,
    "EXCEPTION_HANDLER": "aegis_site.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "aegis_site.api.schema.AegisAutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(seconds=_positive_int("JWT_ACCESS_TTL", 300)),
    "REFRESH_TOKEN_LIFETIME": timedelta(seconds=_positive_int("JWT_REFRESH_TTL", 86_400)),
    "SIGNING_KEY": env.str("JWT_SIGNING_KEY", default="") or SECRET_KEY,
    "ALGORITHM": env.str("JWT_ALGORITHM", default="HS256"),
    "AUTH_HEADER_TYPES": ("Bearer",),
    "UPDATE_LAST_LOGIN": False,
    # An operator's pair carries a digest of the password: a password change ends it (aegis_site/api/jwt_claims.py).
    "TOKEN_OBTAIN_SERIALIZER": "aegis_site.api.jwt_claims.OperatorTokenObtainSerializer",  # nosec B105  (a class path, not a secret)
    "TOKEN_REFRESH_SERIALIZER": "aegis_site.api.jwt_claims.RefreshSerializer",  # nosec B105  (a class path, not a secret)
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Aegis Event Bus API",
    "DESCRIPTION": (
        "Agents (Bearer agent token or agent JWT) enrol, claim tasks and report on them; operators "
        "(staff session, personal token or JWT) manage agents, jobs, tasks and read the audit log. "
        'Every error is {"error": {"code", "message", "fields"?}}.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "JobStateEnum": "tasks.models.JobState",
        "TaskStateEnum": "tasks.models.TaskState",
        "EventTypeEnum": "notify.models.EventType",
    },
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums"],
}


# --- Health ------------------------------------------------------------------------

ROLE_HEARTBEAT_INTERVAL = _positive_float("ROLE_HEARTBEAT_INTERVAL", 10.0)  # how often bridge/dispatcher report
ROLE_STALE_AFTER = _positive_float("ROLE_STALE_AFTER", 60.0)  # a role silent this long is unhealthy
CERT_WARN_DAYS = _positive_int("CERT_WARN_DAYS", 30)
# /healthz/comprehensive answers anyone: its broker CONNECT is reused this long (one connection per period at most).
HEALTH_BROKER_CACHE_SECONDS = _positive_float("HEALTH_BROKER_CACHE_SECONDS", 5.0)
# A bridge or dispatcher whose steps failed this many times in a row (with backoff, about 75 s) exits non-zero
# so that its supervisor restarts it; a role alive but failing every step would look healthy.
ROLE_MAX_FAILED_STEPS = _positive_int("ROLE_MAX_FAILED_STEPS", 20)


# --- Admin live updates (ops/live) ----------------------------------------------------

LIVE_POLL_INTERVAL = _positive_float("LIVE_POLL_INTERVAL", 1.0)  # change feed reads, per web process with sockets
LIVE_SEEN_INTERVAL = _positive_float("LIVE_SEEN_INTERVAL", 5.0)  # heartbeat-only moves announced at most this often
LIVE_HEALTH_INTERVAL = _positive_float("LIVE_HEALTH_INTERVAL", 10.0)  # "health" announced on this timer


# Where setup_broker wrote the CA, certificates, mosquitto.conf and ACL: the default of rotate_certs,
# check_certs and revoke_agent_cert (--dir overrides it).
BROKER_DIR = env.str("BROKER_DIR", default="") or None
AEGIS_CRL_VALIDITY_DAYS = _positive_int("AEGIS_CRL_VALIDITY_DAYS", 180)


# --- Metrics -----------------------------------------------------------------------

METRICS_TOKEN = env.str("METRICS_TOKEN", default="")  # Bearer token for /metrics*; or come from an allowed network
METRICS_ALLOWED_NETWORKS = env.list("METRICS_ALLOWED_NETWORKS", default=["127.0.0.1/32", "::1/128"])
METRICS_PORT = env.int("METRICS_PORT", default=0)  # bridge and dispatcher: serve /metrics on this port (0: off)
METRICS_ADDR = env.str("METRICS_ADDR", default="127.0.0.1")


# --- Logging -----------------------------------------------------------------------

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(f"LOG_LEVEL must be one of DEBUG..CRITICAL, got {LOG_LEVEL!r}")

# JSON lines (structlog) by default; LOG_FORMAT=plain for a person at a terminal (the all-in-one mode).
# Every line carries the request id bound by ops.metrics.middleware; ``extra`` fields become keys.
LOG_FORMAT = env.str("LOG_FORMAT", default="json")
if LOG_FORMAT not in {"json", "plain"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be json or plain, got {LOG_FORMAT!r}")
SLOW_REQUEST_MS = _positive_float("SLOW_REQUEST_MS", 500.0)
# One INFO line per task transition (logger aegis.transitions); WARNING silences them on a busy bridge.
TRANSITION_LOG_LEVEL = env.str("TRANSITION_LOG_LEVEL", default="INFO").upper()
if TRANSITION_LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(f"TRANSITION_LOG_LEVEL must be one of DEBUG..CRITICAL, got {TRANSITION_LOG_LEVEL!r}")

# Also routes warnings and uncaught exceptions through the handler below (aegis_site/logs.py).
LOGGING_CONFIG = "aegis_site.logs.configure"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "aegis_site.logs.json_formatter"},
        "plain": {"()": "aegis_site.logs.plain_formatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "aegis.transitions": {"level": TRANSITION_LOG_LEVEL},
        # The embedded broker of the all-in-one mode narrates every state change at INFO.
        "transitions": {"level": "WARNING"},
        "amqtt": {"level": "WARNING"},
        "twisted": {"level": "WARNING"},  # daphne's Twisted log (aegis_site/asgi.py), without its start-up chatter
        "axes": {"level": "ERROR"},  # ops.logins logs auth_failed / rate_limit for each attempt instead
    },
}
