"""``fglens bench --train``: a distill training step against plain LoRA training of the same layers.

The Wan stack of the CPU benchmark (`fglens.testing.tiny_wan_transformer`, 4 blocks, 4 heads × 32) with a rank-8
LoRA on blocks 1-2's text q/k (`fg.train.add_lora`), at each token count N, two steps side by side:

- ``plain``: forward, the mean square of the output as the loss, backward, AdamW step — plain LoRA training;
- ``distill``: the same forward under ``Trace(..., observers=[probe])``, the KL from a fixed teacher distribution to
  the student's text attention at the two layers (`fglens.train`), backward, AdamW step — what `FocalLoRA` does.

Time: median of `repeats` interleaved rounds after one warm-up; memory: the peak of live tensor bytes during the
step (`LiveBytesMeter`, the parameters and inputs excluded). The ratios distill/plain are printed; no target is set
(issue 16 asks for the measurement), so the lines are INFO.

Example:
    >>> rows = run_train_benchmark([80], repeats=1, frame_hw=(4, 5))
    >>> [r["mode"] for r in rows]
    ['plain', 'distill']
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

LAYERS = ("blocks.1", "blocks.2")


def run_train_benchmark(tokens: Sequence[int], *, repeats: int = 3, rank: int = 8,
                        frame_hw: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """One record per (N, mode): seconds per step (median), peak live bytes of the step."""
    from .workload import frame_size_for

    frame_hw = frame_size_for(tokens) if frame_hw is None else frame_hw
    return [row for n in tokens for row in _one(n, frame_hw, repeats, rank)]


def _one(n: int, frame_hw: tuple[int, int], repeats: int, rank: int) -> list[dict[str, Any]]:
    import fglens as fg
    from fglens.trace.tracer import Trace

    from ..train.probe import TextProbe, distill_kl, real_columns, text_distribution
    from .meters import LiveBytesMeter
    from .workload import wan_inputs

    model = fg.testing.tiny_wan_transformer(num_layers=4, heads=4, head_dim=32)
    fg.train.add_lora(model, list(LAYERS), rank=rank)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    inputs = wan_inputs(n, frame_hw)
    probe = TextProbe(LAYERS)
    with torch.no_grad(), Trace(model, observers=[probe]):
        model(**inputs)
    lengths = fg.adapters.adapter_for(model).text_lengths((), inputs)  # as FocalLoRA collapses the pad keys
    n_real = {layer: real_columns(call.key, lengths) for layer, call in probe.calls.items()}
    teacher = {layer: text_distribution(call, n_real=n_real[layer]).detach() for layer, call in probe.calls.items()}

    def plain() -> None:
        loss = model(**inputs)[0].square().mean()
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    def distill() -> None:
        with Trace(model, observers=[probe]):
            model(**inputs)
        loss = distill_kl(teacher, probe.calls, n_real)
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    steps = {"plain": plain, "distill": distill}
    times: dict[str, list[float]] = {m: [] for m in steps}
    peaks: dict[str, int] = {}
    for mode, step in steps.items():  # warm-up, and the memory of one step
        step()
        with LiveBytesMeter() as meter:
            step()
        peaks[mode] = meter.peak
    for _ in range(repeats):
        for mode, step in steps.items():
            start = time.perf_counter()
            step()
            times[mode].append(time.perf_counter() - start)
    return [{"n_tokens": n, "mode": mode, "seconds": statistics.median(times[mode]), "peak_bytes": peaks[mode],
             "layers": list(LAYERS), "rank": rank} for mode in steps]


def train_report(rows: Sequence[dict[str, Any]]) -> str:
    """The table and the INFO lines of distill/plain per N."""
    lines = ["fglens bench --train: tiny Wan stack (4 blocks, 4 heads x 32), rank-8 LoRA on blocks.1-2 text q/k, "
             "CPU; plain = MSE on the output; distill = fglens probes + KL at the two layers", "",
             f"{'N':>6} {'plain ms':>10} {'distill ms':>11} {'time ratio':>11} {'plain MB':>10} {'distill MB':>11} "
             f"{'memory ratio':>13}"]
    by_n: dict[int, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_n.setdefault(r["n_tokens"], {})[r["mode"]] = r
    for n, m in by_n.items():
        p, d = m["plain"], m["distill"]
        lines.append(f"{n:>6} {1e3 * p['seconds']:>10.1f} {1e3 * d['seconds']:>11.1f} "
                     f"{d['seconds'] / p['seconds']:>11.3f} {p['peak_bytes'] / 2**20:>10.1f} "
                     f"{d['peak_bytes'] / 2**20:>11.1f} {d['peak_bytes'] / max(1, p['peak_bytes']):>13.3f}")
    lines.append("")
    for n, m in by_n.items():
        p, d = m["plain"], m["distill"]
        lines.append(f"INFO N={n}: a distill step costs {d['seconds'] / p['seconds']:.2f}x a plain LoRA step's time "
                     f"and {d['peak_bytes'] / max(1, p['peak_bytes']):.2f}x its peak live memory")
    return "\n".join(lines)


__all__ = ["LAYERS", "run_train_benchmark", "train_report"]
