"""A FastAPI application that hands work to lexigram-tasks workers (see ../README.md)."""
