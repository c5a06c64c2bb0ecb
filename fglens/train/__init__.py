"""Focal Guidance by light post-training (issue 16): LoRA on the semantic-weak layers' attention projections only.

`add_lora` / `save_lora` attach, save and reload the adapter through peft and diffusers' own LoRA loading;
`FocalLoRA` trains it (the ``distill`` loss: the student learns a Focal Guidance teacher's attention along the
teacher's own sampling trajectories; ``flow``: flow matching on videos; ``anchor``: flow matching plus a term raising
each masked word's attention inside its region, `anchor_term`); `items` reads its data; `TextProbe` and
`text_distribution` are the losses' differentiable view of an attention call.

Example:
    >>> import fglens as fg
    >>> pipe = fg.testing.tiny_wan_i2v_pipeline()
    >>> fg.train.add_lora(pipe, ["blocks.1"], rank=4)[:2]
    ['blocks.1.attn2.to_q.lora_A.focal.weight', 'blocks.1.attn2.to_q.lora_B.focal.weight']
"""

from .anchor import anchor_term, region_weights
from .curve import write_curve
from .data import TrainItem, items
from .job import LOSSES, FocalLoRA
from .lora import DEFAULT_PROJECTIONS, add_lora, lora_targets, save_lora
from .probe import TextProbe, log_text_distribution, text_distribution

__all__ = ["DEFAULT_PROJECTIONS", "LOSSES", "FocalLoRA", "TextProbe", "TrainItem", "add_lora", "anchor_term", "items",
           "log_text_distribution", "lora_targets", "region_weights", "save_lora", "text_distribution", "write_curve"]
