"""A tasks module that configures an OpenTelemetry SDK when a child imports it: its
spans go, one JSON line each, to the file named by ``LEXIGRAM_TEST_CHILD_SPANS``."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from opentelemetry import baggage, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


class _FileExporter(SpanExporter):
    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a") as out:
            for span in spans:
                assert span.context is not None
                parent = span.parent.span_id if span.parent is not None else None
                line = {"name": span.name, "trace": span.context.trace_id, "parent": parent}
                out.write(json.dumps(line) + "\n")
        return SpanExportResult.SUCCESS


_path = os.environ.get("LEXIGRAM_TEST_CHILD_SPANS")
if _path:
    _provider = TracerProvider()
    _provider.add_span_processor(SimpleSpanProcessor(_FileExporter(_path)))
    trace.set_tracer_provider(_provider)


def traced() -> str:
    return "done"


def traced_tenant() -> str | None:
    """The ``tenant`` baggage entry, as the child's own span runs."""
    value = baggage.get_baggage("tenant")
    return None if value is None else str(value)
