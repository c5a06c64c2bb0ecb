"""The bottom of fglens' core: what one attention call is (`call`), where an edit or a recording applies (`scope`),
and the exact probabilities of a set of keys (`probs`). `trace/` and `interventions/` both build on these and on
nothing of each other's.

Example:
    >>> from fglens.core import BRANCHES, Where
    >>> BRANCHES, Where(steps=(0.0, 0.5)).has_step(4, 10)
    (('cond', 'uncond'), True)
"""

from .call import AttentionCall, Bias, EditCall, ForwardContext
from .scope import BRANCHES, Where, resolve_layers

__all__ = ["BRANCHES", "AttentionCall", "Bias", "EditCall", "ForwardContext", "Where", "resolve_layers"]
