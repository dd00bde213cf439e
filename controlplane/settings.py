"""Settings for the control plane: one module, driven by environment variables.

Embedded defaults (SQLite, a filesystem Celery broker, the in-process channel layer) let a
fresh machine run the demo with no servers; a real site sets DATABASE_URL, CELERY_BROKER_URL
and REDIS_URL. See docs/configuration.md for every variable.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from controlplane.env import (
    env_bool,
    env_float,
    env_int,
    env_json,
    env_list,
    env_secret,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("MEDCTL_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", False)
# A site declares itself with MEDCTL_ENV=production (deploy/ units set it): then every secret
# must be given and DEBUG is refused. Elsewhere (a checkout: the demo, the tests, a command
# such as deid_folder) secrets are generated once under var/ with mode 0600.
PRODUCTION = env_str("MEDCTL_ENV", "development").strip().lower() == "production"
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG must be off when MEDCTL_ENV=production")
_DEV = not PRODUCTION and (DEBUG or env_bool("MEDCTL_DEV_SECRETS", True))
SECRET_KEY = env_secret("SECRET_KEY", required=not _DEV, generate_into=VAR_DIR / "secret_key")
# Signs the daily audit digests; separate from SECRET_KEY so rotating sessions keeps evidence.
AUDIT_DIGEST_KEY = env_secret(
    "AUDIT_DIGEST_KEY", required=not _DEV, generate_into=VAR_DIR / "audit_digest_key"
)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",  # first, so runserver serves ASGI (WebSockets) too
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "axes",
    "apps.core",
    "apps.accounts",
    "apps.audit",
    "apps.inventory",
    "apps.deid",
    "apps.review",
    "apps.datasets",
    "apps.jobs",
    "apps.demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "apps.core.middleware.RequestContextMiddleware",
    "apps.core.middleware.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "apps.core.middleware.AccessMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes requires
]

ROOT_URLCONF = "controlplane.urls"
ASGI_APPLICATION = "controlplane.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "apps.core.context_processors.nav",
            ],
        },
    },
]

# --- database -------------------------------------------------------------------------------
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'medctl.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE takes the write lock at BEGIN, so two writers never both read the same audit
    # chain head; WAL lets readers (the web UI) go on while the worker writes.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not memory, so a real Celery worker process in the tests sees the same data.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
else:
    # Per process, so concurrent test runs on one machine never share a test database.
    DATABASES["default"]["TEST"] = {"NAME": f"test_medctl_{os.getpid()}"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- auth, MFA, lockout ---------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first, so a locked-out account is refused early
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "core:home"
LOGOUT_REDIRECT_URL = "accounts:login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = env_int("LOGIN_LOCKOUT_MINUTES", 15) / 60  # hours
# Lock the account, not the address: hospital users sit behind shared NAT.
AXES_LOCKOUT_PARAMETERS = ["username"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "accounts/locked.html"
AXES_VERBOSE = False
OTP_TOTP_ISSUER = env_str("OTP_TOTP_ISSUER", "MedCtl")
# Roles whose members must pass a TOTP check before any page but enrolment (seed 5.1).
MFA_REQUIRED_ROLES = ["privacy_officer", "operator", "admin"]
API_TOKEN_MAX_HOURS = env_int("API_TOKEN_MAX_HOURS", 12)
API_TOKEN_DEFAULT_HOURS = env_int("API_TOKEN_DEFAULT_HOURS", 8)

SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 8 * 3600)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"

# --- security headers when not in debug -----------------------------------------------------
SECURE_COOKIES = env_bool("SECURE_COOKIES", not DEBUG)
SESSION_COOKIE_SECURE = SECURE_COOKIES
CSRF_COOKIE_SECURE = SECURE_COOKIES
SECURE_HSTS_SECONDS = 0 if DEBUG else env_int("SECURE_HSTS_SECONDS", 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)  # usually done by the proxy
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_TLS_PROXY", False) else None
)
X_FRAME_OPTIONS = "DENY"
# Everything is served from this origin: no CDN is reachable from hospital networks anyway.
CONTENT_SECURITY_POLICY = env_str(
    "CONTENT_SECURITY_POLICY",
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'self'; "
    "form-action 'self'",
)
# Client IPs for the audit trail: only trust X-Forwarded-For from these proxies.
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", [])

# --- i18n -----------------------------------------------------------------------------------
LANGUAGE_CODE = env_str("LANGUAGE_CODE", "en")
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env_str("TIME_ZONE", "Asia/Shanghai")
USE_I18N = True
USE_TZ = True

# --- static ---------------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = DEBUG

# --- API ------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.accounts.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Default deny: a view that declares no roles is refused (apps/core/access.py).
    "DEFAULT_PERMISSION_CLASSES": ["apps.core.access.DeclaredRolesPermission"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "MedCtl API",
    "DESCRIPTION": "Control plane for private multimodal medical-model pretraining.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Choice sets drf-spectacular cannot name from a field alone (one set under several field
    # names, or one field name over several sets); it would add hash suffixes and warn.
    "ENUM_NAME_OVERRIDES": {
        "WorkStatusEnum": "apps.core.models.WorkStatus",  # a scan's and a de-id run's status
        # A QA check's result, a verdict's decision and a review item's outcome.
        "PassFailEnum": "apps.inventory.models.QAResult",
        "ReviewBatchStatusEnum": "apps.review.models.ReviewBatch.Status",
    },
}

# --- Celery ---------------------------------------------------------------------------------
_BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    # Kombu's filesystem transport needs no server yet is consumed by a real worker process.
    for sub in ("out", "processed", "control"):
        (_BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_BROKER_DIR / "out"),
        "data_folder_out": str(_BROKER_DIR / "out"),
        "processed_folder": str(_BROKER_DIR / "processed"),
        # Broadcast (remote control) exchanges; kombu's default is ./control in the CWD.
        "control_folder": str(_BROKER_DIR / "control"),
        "store_processed": False,
    }
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# --- channels -------------------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- audit ----------------------------------------------------------------------------------
# Write-once store for the signed daily digests: "local" (a folder; files created once, made
# read-only) or "s3" (a bucket with Object Lock in COMPLIANCE mode).
AUDIT_DIGEST_STORE = env_str("AUDIT_DIGEST_STORE", "local")
AUDIT_DIGEST_DIR = Path(env_str("AUDIT_DIGEST_DIR", str(VAR_DIR / "audit-digests")))
AUDIT_DIGEST_S3_BUCKET = env_str("AUDIT_DIGEST_S3_BUCKET", "")
AUDIT_DIGEST_S3_PREFIX = env_str("AUDIT_DIGEST_S3_PREFIX", "audit-digests/")
AUDIT_DIGEST_S3_ENDPOINT = env_str("AUDIT_DIGEST_S3_ENDPOINT", "") or None
AUDIT_DIGEST_RETENTION_DAYS = env_int("AUDIT_DIGEST_RETENTION_DAYS", 3650)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # kombu warns that the filesystem broker has no hostname; that is the point of it.
    "loggers": {"axes": {"level": "WARNING"}, "kombu.connection": {"level": "ERROR"}},
}

MFA_VERIFY_URL = "/accounts/mfa/"
# Lockout is per account on purpose (shared hospital NAT would lock a whole ward by IP);
# axes.W006 warns about IP-less lockout, which is the point here.
SILENCED_SYSTEM_CHECKS = ["axes.W006"]

# --- inventory ------------------------------------------------------------------------------
# Keys the study/series hashes that group raw files into samples. Separate from SECRET_KEY so
# rotating sessions never changes every grouping key.
INVENTORY_UID_KEY = env_secret(
    "INVENTORY_UID_KEY", required=not _DEV, generate_into=VAR_DIR / "inventory_uid_key"
)
# Folders a data source's raw root must sit under (empty: any absolute path).
INVENTORY_ALLOWED_ROOTS = env_list("INVENTORY_ALLOWED_ROOTS", [])

# --- review (seed 2.2: sample 1-5 %, pass rate >= 99 % before release) -----------------------
REVIEW_FRACTION_MIN = env_float("REVIEW_FRACTION_MIN", 0.01)
REVIEW_FRACTION_MAX = env_float("REVIEW_FRACTION_MAX", 0.05)
REVIEW_MIN_PER_STRATUM = env_int("REVIEW_MIN_PER_STRATUM", 3)
REVIEW_THRESHOLD = env_float("REVIEW_THRESHOLD", 0.99)
# "可接受阈值视法律/伦理规定调整": a batch may set its threshold inside this band only.
REVIEW_THRESHOLD_MIN = env_float("REVIEW_THRESHOLD_MIN", 0.95)
REVIEW_THRESHOLD_MAX = env_float("REVIEW_THRESHOLD_MAX", 0.9999)
REVIEW_CONFIDENCE = env_float("REVIEW_CONFIDENCE", 0.95)  # one-sided Clopper-Pearson
REVIEW_DOUBLE_REVIEW_FRACTION = env_float("REVIEW_DOUBLE_REVIEW_FRACTION", 0.10)
REVIEW_LEASE_SECONDS = env_int("REVIEW_LEASE_SECONDS", 600)
REVIEW_ORIGINAL_GRANT_SECONDS = env_int("REVIEW_ORIGINAL_GRANT_SECONDS", 600)

# --- datasets -------------------------------------------------------------------------------
DATASETS_ROOT = Path(env_str("DATASETS_ROOT", str(VAR_DIR / "datasets")))
# Packing decodes every file; more processes help only on many-core packing nodes.
DATASETS_PACK_WORKERS = env_int("DATASETS_PACK_WORKERS", 1)

# --- training runs (apps/jobs; every variable is described in docs/jobs.md) ----------------
JOBS_SCHEDULER = env_str("JOBS_SCHEDULER", "local")  # local | slurm | slurmrestd | pyslurm
JOBS_SCHEDULER_OPTIONS = env_json("JOBS_SCHEDULER_OPTIONS", {})  # {"slurmrestd": {...}}
JOBS_RUNS_ROOT = Path(env_str("JOBS_RUNS_ROOT", str(VAR_DIR / "runs")))  # shared by the nodes
_run_dir_mode = env_str("JOBS_RUN_DIR_MODE", "")
JOBS_RUN_DIR_MODE = int(_run_dir_mode, 8) if _run_dir_mode else None
JOBS_PYTHON = env_str("JOBS_PYTHON", "") or sys.executable  # the nodes' training interpreter
JOBS_SCRIPT_TEMPLATE_DIR = env_str("JOBS_SCRIPT_TEMPLATE_DIR", "") or None
# The seed's NCCL block minus its RoCE-only GID index (see deploy/slurm/templates).
JOBS_NCCL_ENV = env_json(
    "JOBS_NCCL_ENV", {"NCCL_DEBUG": "WARN", "NCCL_IB_TIMEOUT": "23", "NCCL_IB_HCA": "mlx5"}
)
JOBS_CACHE_ROOT = env_str("JOBS_CACHE_ROOT", "")  # node-local NVMe shard cache
JOBS_CPUS_PER_GPU = env_int("JOBS_CPUS_PER_GPU", 0)
JOBS_METRICS_PORT = env_int("JOBS_METRICS_PORT", 8085)
JOBS_GPU_MEMORY_GIB = env_int("JOBS_GPU_MEMORY_GIB", 80)
JOBS_RECONCILE_SECONDS = env_int("JOBS_RECONCILE_SECONDS", 15)
JOBS_PER_USER_TOKENS = env_bool("JOBS_PER_USER_TOKENS", True)
JOBS_CLUSTER_USERS = env_json("JOBS_CLUSTER_USERS", {})
JOBS_SERVICE_ACCOUNT = env_str("JOBS_SERVICE_ACCOUNT", os.environ.get("USER", "medctl"))
