"""Tracing for code that sends jobs by other means than an enqueue: the PRODUCER span.

The DLQ's replays use it, and so can a package that hands jobs to a backend
itself: :func:`producer_span` opens the same ``send {queue}`` (or ``create
{queue}``) span an enqueue opens, with the messaging attributes of
:mod:`lexigram.tasks._otel.attributes` (re-exported here as ``attributes``),
and injects its context into the job's headers so the worker's ``process``
span continues the trace.
"""

from lexigram.tasks._otel import attributes
from lexigram.tasks._otel.producer import (
    message_attributes,
    operation_attributes,
    producer_span,
)

__all__ = ["attributes", "message_attributes", "operation_attributes", "producer_span"]
