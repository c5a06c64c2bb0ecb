"""The tracing layer: the context manager, the step/branch clock, attention interception, exact probabilities."""

from ..core.call import AttentionCall, ForwardContext
from .record import DEFAULT_STATS, STATS, Record
from .tracer import Trace, trace

__all__ = ["DEFAULT_STATS", "STATS", "AttentionCall", "ForwardContext", "Record", "Trace", "trace"]
