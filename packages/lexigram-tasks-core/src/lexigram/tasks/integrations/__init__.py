"""Integrations with web frameworks, ORMs and monitoring tools.

Each submodule needs its own optional extra (``pip install
"lexigram-tasks[fastapi]"`` and so on); importing this package needs none.
"""
