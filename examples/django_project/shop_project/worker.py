"""What the worker process loads: ``lexigram-tasks worker shop_project.worker:provider``.

Django is set up first, so the tasks can use the ORM.
"""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop_project.settings")
django.setup()

from shop.tasks import provider  # noqa: E402

__all__ = ["provider"]
