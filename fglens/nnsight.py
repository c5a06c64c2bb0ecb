"""nnsight interop: fglens sites as modules an nnsight trace can read and edit.

`fg.nnsight.probes(target, sites=[...])` opens an `fg.trace` whose one intervention, at each named site,
computes the call's attention probabilities ``P [B, H, N, T]`` (float32, from the call's own queries and keys,
with the kernel's softmax scale), passes them through a small identity module — the site's *probe*, a child
of the transformer at ``transformer.fglens_probes.<key>`` (the site name with dots as underscores) — and
makes the site's output from what the probe returns: ``out = P' @ V``. nnsight sees ``P`` as the probe's
``.output``; read it, save it, or assign an edited ``P'`` to it, at every call (sampling step, CFG branch).

When nobody touched the probe's output (the very same tensor came back, not edited in place) the call's output
is the model's own kernel output, bit for bit. The probe's map is dense ``B·H·N·T`` — only for the probed
sites; every other site keeps the fused kernel.

Wrap the transformer with nnsight *before* opening the block: nnsight installs its controller as the module's
``forward``, and one installed inside the block would wrap fglens' hooks, which the block removes on exit.

Example:
    >>> import nnsight, torch, fglens as fg
    >>> t = fg.testing.tiny_wan_transformer()
    >>> x = dict(hidden_states=torch.randn(1, 36, 2, 4, 6), timestep=torch.tensor([900]),
    ...          encoder_hidden_states=torch.randn(1, 512, 32), encoder_hidden_states_image=torch.randn(1, 257, 8))
    >>> model = nnsight.NNsight(t)  # wrap first, then open the probes block
    >>> with fg.nnsight.probes(model, sites=["blocks.2.cross.text"], words={"dog": [1]}) as probes:
    ...     with model.trace(**x):
    ...         p = probes.envoy(model, "blocks.2.cross.text").output.save()
    >>> tuple(p.shape)  # [B, H, N video tokens, T text keys]
    (1, 2, 12, 512)
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .adapters.base import Site
from .core.protocol import EditCall, Intervention
from .trace.tracer import Trace, _transformers

__all__ = ["PROBES_ATTR", "Probe", "Probes", "probe_key", "probes", "renormalise", "scale_columns"]

#: the attribute of the transformer under which the probes are mounted while a `probes` block is open
PROBES_ATTR = "fglens_probes"
#: site kinds with one separate softmax per call and no mask (P @ V is the call's output)
_KINDS = ("self", "image", "text")
#: where nnsight keeps its per-module state (nnsight.intervention.source.STATE)
_NNSIGHT_STATE = "__nnsight__"

# one ModuleDict of probes per transformer, reused across blocks, so an nnsight envoy that has already mirrored
# a probe keeps addressing the very module that a later block mounts again
_MOUNTS: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.ModuleDict] = weakref.WeakKeyDictionary()


def probe_key(site: str) -> str:
    """The probe's name under ``transformer.fglens_probes`` for a site name (dots become underscores).

    Example:
        >>> probe_key("blocks.2.cross.text")
        'blocks_2_cross_text'
    """
    return site.replace(".", "_")


class Probe(torch.nn.Module):
    """Identity: ``forward(P) -> P``. Exists so nnsight can see (and replace) a site's probabilities."""

    def __init__(self, site: str):
        super().__init__()
        self.site = site

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return probs

    def extra_repr(self) -> str:
        return f"site={self.site!r}"


def scale_columns(probs: torch.Tensor, columns: Sequence[int], factor: float) -> torch.Tensor:
    """``P`` with the given key columns multiplied by `factor` and each row renormalised to sum 1.

    This is what `fg.Scale(word, factor)` does (a logit offset of log factor), written on the probabilities.
    """
    out = probs.clone()
    cols = list(columns)
    if cols:
        out[..., cols] = out[..., cols] * factor
    return renormalise(out)


def renormalise(probs: torch.Tensor) -> torch.Tensor:
    """Each row divided by its sum."""
    return probs / probs.sum(-1, keepdim=True)


class _ProbeEdit(Intervention):
    """The intervention behind `probes`: dense P at the probed sites, through the probe, then P' @ V."""

    def __init__(self, owner: Probes):
        self.owner = owner

    def spec(self) -> dict[str, Any]:
        return {"type": "nnsight.probes", "sites": list(self.owner.sites)}

    def requires(self) -> dict[str, Any]:
        words = self.owner.words
        return {"words": list(words)} if words is not None and not isinstance(words, Mapping) else {}

    def start_run(self, words: dict[str, list[int]]) -> None:
        given = self.owner.words
        if isinstance(given, Mapping):
            words = {str(k): [int(p) for p in v] for k, v in given.items()}
        self.owner._positions = dict(words)

    def applies(self, site: Site, forward) -> bool:
        return site.name in self.owner._probe_of

    def edit_output(self, call: EditCall, out: torch.Tensor) -> torch.Tensor:
        probe = self.owner._probe_of[call.site.name]
        logits = torch.einsum("bnhd,bthd->bhnt", call.query.float(), call.key.float()) * call.scale
        probs = torch.softmax(logits, dim=-1)
        version = _version(probs)
        edited = probe(probs)
        if edited is probs and version is not None and _version(probs) == version:
            return out  # untouched: the model's own kernel output, bit for bit
        if not isinstance(edited, torch.Tensor) or edited.shape != probs.shape:
            raise ValueError(
                f"the probe of {call.site.name} must stay a tensor of shape {tuple(probs.shape)} "
                f"[B, H, N, T]; got {getattr(edited, 'shape', type(edited).__name__)}"
            )
        mixed = torch.einsum("bhnt,bthd->bnhd", edited.to(torch.float32), call.value.float())
        return mixed.to(out.dtype)


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # inference tensors keep no version counter
        return None


class Probes:
    """The handle `fg.nnsight.probes(...)` returns; a context manager.

    Inside the block the probes are mounted at ``transformer.fglens_probes.<key>`` and an `fg.trace` is open
    on `target`; leaving removes both, whatever happened.

    Attributes:
        sites: the probed site names.
        words: what `columns` resolves: prompt words (located in the pipeline's prompt at the first forward) or
            ``{label: [token positions]}`` (needed for a bare transformer).
        trace: the underlying `fg.Trace` (its dataset holds what `record=` recorded).
    """

    def __init__(
        self,
        target: Any,
        sites: Sequence[str] | str,
        words: Sequence[str] | Mapping[str, Sequence[int]] | str | None = None,
        record: Any = None,
        edit: Intervention | None = None,
    ):
        self.envoy_root = None
        if _is_envoy(target):
            self.envoy_root = target
            # nnsight's DiffusionModel wraps a module view of the pipeline that keeps it as `.pipeline`
            target = getattr(target._module, "pipeline", None) or target._module
        self.target = target
        self.sites = [sites] if isinstance(sites, str) else list(sites)
        self.words = [words] if isinstance(words, str) else words
        self.record = record
        self.extra_edit = edit
        self._positions: dict[str, list[int]] = {}
        self._probe_of: dict[str, Probe] = {}
        self._mounted: list[tuple[torch.nn.Module, torch.nn.ModuleDict]] = []
        self._wrapped: dict[int, bool] = {}
        self.trace: Trace | None = None
        _, found = _transformers(target)
        from .adapters import adapter_for

        self._site_owner: dict[str, tuple[torch.nn.Module, Site]] = {}
        known: list[str] = []
        for prefix, transformer in found:
            adapter = adapter_for(transformer, prefix)
            for site in adapter.sites():
                known.append(site.name)
                if site.name in self.sites:
                    if adapter.family != "wan" or site.kind not in _KINDS:
                        raise NotImplementedError(
                            f"nnsight probes cover Wan's separate-softmax sites (self, cross.image, cross.text); "
                            f"{site.name} is a {adapter.family} {site.kind!r} site"
                        )
                    self._site_owner[site.name] = (transformer, site)
        missing = [s for s in self.sites if s not in self._site_owner]
        if missing:
            raise ValueError(f"unknown site(s) {missing}; this model's sites are e.g. {known[:6]}")

    # -- addressing ---------------------------------------------------------------------------------------
    def key(self, site: str) -> str:
        return probe_key(site)

    def envoy(self, model: Any, site: str) -> Any:
        """The nnsight envoy of `site`'s probe, from the nnsight model wrapping the transformer (or a pipeline
        module holding it as ``transformer`` / ``transformer_2``)."""
        if site not in self._site_owner:
            raise KeyError(f"{site} is not probed here; probed: {self.sites}")
        transformer, _ = self._site_owner[site]
        node = model
        if getattr(model, "_module", None) is not transformer:
            for attr in ("transformer", "transformer_2"):
                child = getattr(model, attr, None)
                if getattr(child, "_module", None) is transformer:
                    node = child
                    break
            else:
                raise ValueError("the nnsight model does not wrap the transformer that holds this site")
        return getattr(getattr(node, PROBES_ATTR), probe_key(site))

    def columns(self, word: str) -> list[int]:
        """The key columns of `word` at a text site (its token positions in the prompt).

        Pipelines: the words are located in the prompt at the first transformer forward, so call this after
        reading a probe's ``.output`` inside the trace (by then that forward has begun).
        """
        if word not in self._positions:
            if not self._positions:
                raise RuntimeError(
                    "the words are not resolved yet: read a probe's .output first (the first forward resolves them),"
                    " and name the words in fg.nnsight.probes(..., words=[...])"
                )
            raise KeyError(f"{word!r} was not named in probes(words=...); named: {list(self._positions)}")
        return list(self._positions[word])

    # -- life cycle ---------------------------------------------------------------------------------------
    def __enter__(self) -> Probes:
        try:
            for transformer in {id(t): t for t, _ in self._site_owner.values()}.values():
                if PROBES_ATTR in transformer._modules:
                    raise RuntimeError(f"{type(transformer).__name__} already has probes mounted: blocks do not nest")
                mount = _MOUNTS.get(transformer)
                if mount is None:
                    mount = _MOUNTS[transformer] = torch.nn.ModuleDict()
                for name, (owner, _) in self._site_owner.items():
                    if owner is transformer:
                        key = probe_key(name)
                        if key not in mount:
                            mount[key] = Probe(name)
                        self._probe_of[name] = mount[key]
                transformer.add_module(PROBES_ATTR, mount)
                self._mounted.append((transformer, mount))
                self._wrapped[id(transformer)] = _NNSIGHT_STATE in transformer.__dict__
            edit: Intervention = _ProbeEdit(self)
            if self.extra_edit is not None:
                edit = self.extra_edit + edit
            self.trace = Trace(self.target, record=self.record, edit=edit)
            self.trace.__enter__()
        except BaseException:
            self._unmount()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if self.trace is not None:
                self.trace.__exit__(exc_type, exc, tb)
        finally:
            self._unmount()
        return False

    def _unmount(self) -> None:
        while self._mounted:
            transformer, _ = self._mounted.pop()
            transformer._modules.pop(PROBES_ATTR, None)
            if not self._wrapped.get(id(transformer), True) and _NNSIGHT_STATE in transformer.__dict__:
                warnings.warn(
                    "an nnsight model was built on this transformer inside the fg.nnsight.probes block: its controller "
                    "wrapped fglens' hooks, which are now removed, so that nnsight model no longer sees the "
                    "transformer's own input/output. Wrap the transformer with nnsight before opening the block.",
                    stacklevel=3,
                )


def probes(
    target: Any,
    sites: Sequence[str] | str,
    words: Sequence[str] | Mapping[str, Sequence[int]] | str | None = None,
    record: Any = None,
    edit: Intervention | None = None,
) -> Probes:
    """Mount nnsight-visible probes of the attention probabilities at fglens sites, for a ``with`` block.

    Args:
        target: a Wan pipeline, a `WanTransformer3DModel`, or an nnsight model wrapping the transformer.
        sites: fglens site names, e.g. ``"blocks.2.cross.text"`` (see docs/sites-wan.md).
        words: prompt words for `Probes.columns` (pipelines), or ``{label: [token positions]}``.
        record: an `fg.Record` to record alongside (it sees the edited attention).
        edit: an fglens intervention applied too; at a probed site whose probe output is edited, the probe's
            ``P' @ V`` replaces that call's output (so it overrides other edits of that call).

    Returns:
        The `Probes` handle: ``probes.envoy(model, site)`` is the probe's envoy in an nnsight model,
        ``probes.columns(word)`` a word's key columns.
    """
    return Probes(target, sites, words=words, record=record, edit=edit)


def _is_envoy(obj: Any) -> bool:
    return type(obj).__module__.startswith("nnsight") and isinstance(getattr(obj, "_module", None), torch.nn.Module)
