"""The CPU-bound job body of the ``*-cpu`` adapters: a fixed amount of pure-Python
work, about 5 ms on the benchmark machine (a fixed count, not a time: every system
does the same work per job). Not an adapter (the runner skips ``_`` names)."""

ITERATIONS = 107_000


def burn():
    x = 0
    for i in range(ITERATIONS):
        x += i * i % 7
    return x
