"""Settings of the example shop: Django on PostgreSQL, jobs on PostgreSQL or Redis.

Read from the environment: ``DATABASE_URL`` (or the test suite's
``LEXIGRAM_TEST_POSTGRES_DSN``), ``SHOP_SCHEMA`` (the schema holding the
shop's tables; the job tables go to ``<SHOP_SCHEMA>_tasks``), and
``SHOP_QUEUE``: ``postgres`` (the default) or ``redis``, with ``REDIS_URL``.
"""

import os
from urllib.parse import unquote, urlsplit

DATABASE_URL = os.environ.get("DATABASE_URL") or os.environ.get(
    "LEXIGRAM_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
SHOP_SCHEMA = os.environ.get("SHOP_SCHEMA", "shop")
_db = urlsplit(DATABASE_URL)

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = ["shop"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "shop_project.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",  # psycopg 3 when it is installed
        "NAME": _db.path.lstrip("/"),
        "USER": unquote(_db.username or ""),
        "PASSWORD": unquote(_db.password or ""),
        "HOST": _db.hostname or "",
        "PORT": _db.port or "",
        "OPTIONS": {"options": f"-c search_path={SHOP_SCHEMA}"},
    }
}

# The provider's configuration, as lexigram.yaml would hold it.
_QUEUES = {
    "postgres": {
        "type": "postgres",
        "postgres_dsn": DATABASE_URL,
        "queue_name": "shop",
        "schema": f"{SHOP_SCHEMA}_tasks",
    },
    "redis": {
        "type": "redis",
        "redis_url": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "queue_name": f"{SHOP_SCHEMA}-jobs",
    },
}
LEXIGRAM_TASKS = {
    "tasks": {
        "backend": _QUEUES[os.environ.get("SHOP_QUEUE", "postgres")],
        "worker": {"worker_count": 2},
    }
}
