"""Settings of the seed-stack fixture: the seed's Django + DRF + simplejwt + PostgreSQL set-up,
configured as a production deployment would be (DEBUG off, no session or admin apps on the
heartbeat path). The database comes from SEED_DB_NAME (the benchmark creates and drops it)."""
import os
from datetime import timedelta

BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET_KEY = os.environ.get("SEED_SECRET_KEY", "seed-stack-benchmark-only-not-a-secret-0123456789")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "rest_framework",
    "users",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
# The seed's users/middleware.py refreshes `last_seen` on every request; SEED_MIDDLEWARE=0
# leaves it out, for the seed's stack at its cheapest (the heartbeat view alone).
if os.environ.get("SEED_MIDDLEWARE", "1") != "0":
    MIDDLEWARE.append("users.middleware.UpdateLastSeenMiddleware")

ROOT_URLCONF = "offchat_backend.urls"
WSGI_APPLICATION = "offchat_backend.wsgi.application"
AUTH_USER_MODEL = "users.User"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ["SEED_DB_NAME"],
        "USER": os.environ.get("SEED_DB_USER", "postgres"),
        "HOST": os.environ.get("SEED_DB_HOST", "127.0.0.1"),
        "PORT": os.environ.get("SEED_DB_PORT", "5432"),
        # One connection per gunicorn worker, kept across requests.
        "CONN_MAX_AGE": None,
    }
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework_simplejwt.authentication.JWTAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}

SIMPLE_JWT = {
    # Long enough for any benchmark run; the tokens are minted by `bench_users`.
    "ACCESS_TOKEN_LIFETIME": timedelta(days=1),
}

USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
