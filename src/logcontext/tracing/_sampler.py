"""``ForceTracingSampler`` (needs ``opentelemetry-sdk``)."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

__all__ = ["ForceTracingSampler"]

FORCE_KEY = "logcontext-force-tracing"


class ForceTracingSampler(Sampler):
    """Sample every span started under forced-tracing baggage; defer to ``base`` otherwise.

    OpenTelemetry decides sampling at span start, so :func:`~logcontext.tracing.force_tracing`
    cannot rescue a span already unsampled; it sets baggage that this sampler reads for later
    spans (children, and spans in tasks started afterwards).
    """

    def __init__(self, base: Sampler) -> None:
        if not isinstance(base, Sampler):
            raise TypeError(f"ForceTracingSampler: base must be an OTel Sampler, not {base!r}")
        self.base = base

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if baggage.get_baggage(FORCE_KEY, parent_context) == "1":
            parent_state = trace.get_current_span(parent_context).get_span_context().trace_state
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, parent_state)
        return self.base.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"ForceTracingSampler{{{self.base.get_description()}}}"
