"""``python -m lexigram.tasks.cli``, the same as the ``lexigram-tasks`` command."""

import sys

from lexigram.tasks.cli import main

sys.exit(main())
