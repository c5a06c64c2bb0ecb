"""Tracing adds no host synchronisation inside transformer forwards (docs/performance.md, "Targets"; issue 6 item 4).

`NoHostSync` is a `TorchDispatchMode`, with Python-level tripwires, that FAILS while a transformer forward runs
(on the main thread) on:

- R1  scalar reads: ``aten._local_scalar_dense`` (``.item()``, ``bool(t)``, ``float(t)``, ``int(t)``, indexing
      with a 0-d tensor);
- R2  ops whose output shape depends on the data (``nonzero``, ``masked_select``, boolean-mask indexing, ...):
      an accelerator must send the size to the host;
- R3  device -> host copies (``aten._to_copy`` / ``aten.copy_`` from a non-CPU tensor to the CPU), except the
      one non-blocking copy per forward made by ``fglens.store.writer.to_host`` (the design);
- R4  blocking host -> device copies after the first step (a stream sync on CUDA; constants built once, during
      the first step's forwards, are allowed);
- R5  host reads in Python by code other than the model's own (diffusers / transformers): ``.item()``,
      ``.tolist()``, ``.numpy()``, ``.cpu()``, ``np.asarray(t)`` -- a dispatch mode cannot see them when the
      tensor is already on the CPU;
- R6  host -> device moves in Python by code other than the model's, after the first step: ``.to(device)``,
      ``.cuda()``, ``torch.tensor(host data, device=...)``.

On a CPU-only machine R3 and R4 cannot happen for real: the positive controls prove the guard catches them with
the ``meta`` device standing in for the accelerator, and R5 / R6 catch the calls that are the copies on an
accelerator. Where CUDA is available the same tests also run on the GPU, where R3 / R4 see real copies.
Every rule has a positive control (a hook doing the forbidden thing makes the guard fail), the plain pipeline
passes the guard, and so do recording and editing (FocalGuidance) on Wan, HunyuanVideo and Wan2.2.
"""

from __future__ import annotations

import json
import os
import sys
import threading

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fglens as fg
import fglens.store.writer as writer
from fglens import testing
from fglens.trace.record import STATS

aten = torch.ops.aten
DATA_DEPENDENT = {
    aten.nonzero.default, aten.masked_select.default, aten.repeat_interleave.Tensor, aten._unique2.default,
    aten.unique_consecutive.default, aten.unique_dim.default, aten.argwhere.default,
}
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_MODEL_CODE = tuple(os.path.dirname(__import__(m).__file__) + os.sep for m in ("diffusers", "transformers"))
_THIS_FILE = os.path.abspath(__file__)
_TO_HOST = writer.to_host.__code__  # the writer's one non-blocking device -> host copy per forward
WARMUP_FORWARDS = 2  # the first step (cond, uncond) may build cached constants on the device


class HostSync(AssertionError):
    """A host synchronisation inside a transformer forward."""

    def __init__(self, rule: str, what: str, origin: str):
        super().__init__(f"{rule}: {what} inside a transformer forward, from {origin}")
        self.rule, self.origin = rule, origin


def _origin() -> tuple[str, bool]:
    """The innermost frame outside torch and the guard: ("file:line (function)", whether it is model code)."""
    f = sys._getframe(1)
    while f is not None:
        name = os.path.abspath(f.f_code.co_filename)
        in_guard = name == _THIS_FILE and f.f_code.co_name in _GUARD_FUNCTIONS
        if not name.startswith(_TORCH_DIR) and not in_guard:
            return f"{name}:{f.f_lineno} ({f.f_code.co_name})", name.startswith(_MODEL_CODE)
        f = f.f_back
    return "?", False


def _in_to_host() -> bool:
    f = sys._getframe(1)
    while f is not None:
        if f.f_code is _TO_HOST:
            return True
        f = f.f_back
    return False


class NoHostSync(TorchDispatchMode):
    """Raises `HostSync` on the rules of the module docstring while a transformer forward runs (see `guard`).

    `host_to_device=False` leaves out R4 and R6 (host -> device copies), to check the host reads on their own.
    """

    def __init__(self, host_to_device: bool = True):
        super().__init__()
        self.depth = 0  # > 0 inside a transformer forward
        self.forwards = 0
        self.thread = threading.get_ident()
        self.host_to_device = host_to_device
        self.allowed_copies = 0  # tensors copied to the host by the writer's to_host (a GPU run only)

    def active(self) -> bool:
        return self.depth > 0 and threading.get_ident() == self.thread

    def checks_host_to_device(self) -> bool:
        return self.host_to_device and self.forwards > WARMUP_FORWARDS

    def fail(self, rule: str, what: str) -> None:
        raise HostSync(rule, what, _origin()[0])

    # -- dispatch level: R1-R4 (the mode stack is per thread: the writer thread is not watched) ------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.depth:
            if func is aten._local_scalar_dense.default:
                self.fail("R1", "a scalar read (.item(), bool(), float(), int())")
            if func in DATA_DEPENDENT or (func is aten.index.Tensor and any(
                    i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1])):
                self.fail("R2", f"{func} (output shape depends on the data)")
            if func in (aten._to_copy.default, aten.copy_.default):
                self._check_copy(func, args, kwargs)
        return func(*args, **kwargs)

    def _check_copy(self, func, args, kwargs) -> None:
        if func is aten._to_copy.default:
            src, dst = args[0].device, torch.device(kwargs.get("device") or args[0].device)
            non_blocking = kwargs.get("non_blocking", False)
        else:
            dst, src = args[0].device, args[1].device
            non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
        if src == dst:
            return
        origin, model = _origin()
        if model:
            return  # the model's own copies are not fglens' doing (the plain pipeline test shows there are none)
        if dst.type == "cpu":
            if non_blocking and _in_to_host():
                self.allowed_copies += 1
                return
            raise HostSync("R3", f"a {src.type} -> cpu copy ({func})", origin)
        if src.type == "cpu" and not non_blocking and self.checks_host_to_device():
            raise HostSync("R4", f"a blocking cpu -> {dst.type} copy ({func})", origin)


def _python_check(mode: NoHostSync, rule: str, what: str) -> None:
    """R5 / R6: fail unless the call is the model's own, or the writer's copy."""
    if mode.active() and (rule != "R6" or mode.checks_host_to_device()):
        origin, model = _origin()
        if not model and not _in_to_host():
            raise HostSync(rule, what, origin)


class guard:
    """``with guard(pipe) as mode:`` -- `NoHostSync` over every forward of the pipeline's transformers; Tensor
    methods and torch factories are restored on exit."""

    READS = ("item", "tolist", "numpy", "cpu", "__array__")
    MOVES = ("to", "cuda")
    FACTORIES = ("tensor", "as_tensor")

    def __init__(self, pipe, host_to_device: bool = True):
        self.modules = [m for m in (pipe.transformer, getattr(pipe, "transformer_2", None)) if m is not None]
        self.mode = NoHostSync(host_to_device)

    def __enter__(self) -> NoHostSync:
        mode = self.mode
        self.saved = saved = {name: getattr(torch.Tensor, name) for name in (*self.READS, *self.MOVES)}
        saved.update({name: getattr(torch, name) for name in self.FACTORIES})

        def enter(*_):
            mode.depth += 1
            mode.forwards += 1

        def leave(*_):
            mode.depth -= 1

        def read(name):
            def tripwire(t, *a, **k):
                _python_check(mode, "R5", f"Tensor.{name}()")
                return saved[name](t, *a, **k)
            return tripwire

        def to(t, *a, **k):
            if any(isinstance(x, (str, torch.device)) for x in a) or k.get("device") is not None:
                _python_check(mode, "R6", f"Tensor.to({', '.join(map(str, a))}) (a host -> device move)")
            return saved["to"](t, *a, **k)

        def cuda(t, *a, **k):
            _python_check(mode, "R6", "Tensor.cuda()")
            return saved["cuda"](t, *a, **k)

        def factory(name):
            def tripwire(data, *a, **k):
                if k.get("device") is not None and not isinstance(data, torch.Tensor):
                    _python_check(mode, "R6", f"torch.{name}(host data, device={k['device']})")
                return saved[name](data, *a, **k)
            return tripwire

        self.handles = [h for m in self.modules
                        for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
        for name in self.READS:
            setattr(torch.Tensor, name, read(name))
        torch.Tensor.to, torch.Tensor.cuda = to, cuda
        for name in self.FACTORIES:
            setattr(torch, name, factory(name))
        mode.__enter__()
        return mode

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)
        for name in (*self.READS, *self.MOVES):
            setattr(torch.Tensor, name, self.saved[name])
        for name in self.FACTORIES:
            setattr(torch, name, self.saved[name])
        for h in self.handles:
            h.remove()


# frames of the guard itself, skipped when naming the origin of a host sync
_GUARD_FUNCTIONS = {"_origin", "_in_to_host", "fail", "_check_copy", "__torch_dispatch__", "_python_check",
                    "tripwire", "to", "cuda"}


# --------------------------------------------------------------------------------------------------------------
# pipelines and calls
# --------------------------------------------------------------------------------------------------------------
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FAMILIES = {"wan": testing.tiny_wan_i2v_pipeline, "hunyuan": testing.tiny_hunyuan_i2v_pipeline,
            "wan22": testing.tiny_wan22_i2v_pipeline}


@pytest.fixture(scope="module", params=DEVICES)
def pipes(request):
    built = {}

    def get(family):
        if family not in built:
            built[family] = FAMILIES[family]().to(request.param)
        return built[family]

    return get


def _call(pipe, family: str, steps: int = 2) -> None:
    kwargs = testing.tiny_call_kwargs("hunyuan" if family == "hunyuan" else "wan", steps=steps)
    if family == "hunyuan":  # true CFG: a second, uncond forward per step
        kwargs.update(true_cfg_scale=2.0, negative_prompt="a blurry picture")
    pipe(**kwargs)


def _record():
    return fg.Record(words=["dog", "fence"], stats=list(STATS), maps=True, branches=("cond", "uncond"))


def _edit(family: str):
    """FocalGuidance with an anchor and a cache transfer, on every step and both branches."""
    dst, src = {"wan": (["blocks.1", "blocks.2"], "blocks.3"), "hunyuan": (["double.1", "single.0"], "single.1"),
                "wan22": (["blocks.1", "transformer_2.blocks.1"], "blocks.2")}[family]
    anchor = fg.AnchorMask.from_mask(torch.ones(2, 3), "dog", strength=2.0)
    return fg.FocalGuidance(anchor=anchor, cache=fg.CacheTransfer(src=[src], dst=dst, alpha=0.5), layers=dst,
                            steps=None, branches=("cond", "uncond"))


@pytest.fixture
def to_host_calls(monkeypatch):
    """Counts the writer's `to_host` calls (the code object `_in_to_host` looks for stays the same)."""
    calls = []
    original = writer.to_host

    def counted(values):
        calls.append(1)
        return original(values)

    monkeypatch.setattr(writer, "to_host", counted)
    return calls


# --------------------------------------------------------------------------------------------------------------
# positive controls: a hook inside the forward doing each kind of host sync makes the guard fail
# --------------------------------------------------------------------------------------------------------------
def _truth(out):
    return bool((out > 0).any())


def _scalar(out):
    return float(out.sum())


def _nonzero(out):
    return out.flatten().nonzero()


def _bool_mask(out):
    return out[out > 0]


def _d2h_copy(out):  # a device -> host copy, `meta` standing in for the device
    return torch.empty(3).copy_(torch.empty(3, device="meta"))


def _d2h_to_copy(out):
    return aten._to_copy.default(torch.empty(3, device="meta"), device=torch.device("cpu"))


def _h2d_copy(out):  # a blocking host -> device copy (caught after the first step)
    return aten._to_copy.default(torch.ones(3), device=torch.device("meta"))


def _item(out):
    return out.flatten()[0].item()


def _tolist(out):
    return out.flatten()[:2].tolist()


def _numpy(out):
    return out.detach().numpy()


def _cpu(out):
    return out.cpu()


def _array(out):
    return np.asarray(out.detach())


def _to_device(out):  # a host-built index moved to the model's device (caught after the first step)
    return torch.ones(3).to(out.device)


def _tensor_on_device(out):
    return torch.tensor([1, 2], device=out.device)


CONTROLS = [(_truth, "R1"), (_scalar, "R1"), (_nonzero, "R2"), (_bool_mask, "R2"), (_d2h_copy, "R3"),
            (_d2h_to_copy, "R3"), (_h2d_copy, "R4"), (_item, "R5"), (_tolist, "R5"), (_numpy, "R5"), (_cpu, "R5"),
            (_array, "R5"), (_to_device, "R6"), (_tensor_on_device, "R6")]


@pytest.fixture(scope="module")
def wan_forward(pipes):
    """The pipeline and the keyword arguments of one real transformer forward, to replay cheaply."""
    pipe = pipes("wan")
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(k) or None, with_kwargs=True)
    try:
        _call(pipe, "wan", steps=1)
    finally:
        hook.remove()
    return pipe, seen[0]


@pytest.mark.parametrize(("action", "rule"), CONTROLS, ids=[c.__name__.strip("_") for c, _ in CONTROLS])
def test_the_guard_fails_on_each_kind_of_host_sync(wan_forward, action, rule):
    pipe, kwargs = wan_forward

    def bad_hook(module, args, out):
        action(out)  # and leave the output alone

    hook = pipe.transformer.blocks[0].register_forward_hook(bad_hook)
    try:
        with pytest.raises(HostSync) as caught, torch.no_grad(), guard(pipe) as mode:
            for _ in range(WARMUP_FORWARDS + 1):
                pipe.transformer(**kwargs)
    finally:
        hook.remove()
    assert caught.value.rule == rule and _THIS_FILE in caught.value.origin, str(caught.value)
    assert mode.forwards == (WARMUP_FORWARDS + 1 if rule in ("R4", "R6") else 1)


def test_the_guard_passes_the_same_forwards_without_the_hook_and_restores_torch(wan_forward):
    pipe, kwargs = wan_forward
    before = {n: getattr(torch.Tensor, n) for n in (*guard.READS, *guard.MOVES)}
    before.update({n: getattr(torch, n) for n in guard.FACTORIES})
    with torch.no_grad(), guard(pipe) as mode:
        for _ in range(WARMUP_FORWARDS + 1):
            pipe.transformer(**kwargs)
    assert mode.forwards == WARMUP_FORWARDS + 1 and mode.depth == 0
    after = {n: getattr(torch.Tensor, n) for n in (*guard.READS, *guard.MOVES)}
    after.update({n: getattr(torch, n) for n in guard.FACTORIES})
    assert after == before
    assert not pipe.transformer._forward_hooks and not pipe.transformer._forward_pre_hooks


# --------------------------------------------------------------------------------------------------------------
# the plain pipeline passes the guard; fglens recording and editing add nothing it catches
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["wan", "hunyuan", "wan22"])
def test_the_plain_pipeline_passes_the_guard(pipes, family):
    pipe = pipes(family)
    with guard(pipe) as mode:
        _call(pipe, family)
    assert mode.forwards == 4  # 2 steps x (cond, uncond): the guard saw every forward


@pytest.mark.parametrize("family", ["wan", "hunyuan", "wan22"])
def test_recording_makes_no_host_sync_inside_forwards(pipes, family, to_host_calls):
    pipe = pipes(family)
    with fg.trace(pipe, record=_record()) as run, guard(pipe) as mode:
        _call(pipe, family)
    assert mode.forwards == 4
    assert len(to_host_calls) == mode.forwards  # one (non-blocking) copy per forward, made by the writer
    assert bool(run.dataset.word_map.notnull().any())  # the run was recorded under the guard


@pytest.mark.parametrize("family", ["wan", "hunyuan", "wan22"])
def test_editing_reads_nothing_back_from_the_device_inside_forwards(pipes, family, to_host_calls):
    # R1-R3 and R5 (host reads); R4 / R6 (host -> device copies) are the next test
    pipe = pipes(family)
    with fg.trace(pipe, record=_record(), edit=_edit(family)) as run, guard(pipe, host_to_device=False) as mode:
        _call(pipe, family)
    assert len(to_host_calls) == mode.forwards == 4
    assert json.loads(run.dataset.attrs["intervention"])["type"] == "FocalGuidance"


@pytest.mark.parametrize("family", ["wan", "hunyuan"])
def test_editing_makes_no_host_to_device_copies_after_the_first_step(pipes, family):
    pipe = pipes(family)
    with fg.trace(pipe, record=_record(), edit=_edit(family)), guard(pipe):
        _call(pipe, family)
