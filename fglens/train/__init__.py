"""Focal Guidance by light post-training (issue 16): LoRA on the semantic-weak layers' attention projections only.

This first piece attaches, saves and reloads the adapter through peft and diffusers' own LoRA loading; the
losses and the training job build on it.

Example:
    >>> import fglens as fg
    >>> pipe = fg.testing.tiny_wan_i2v_pipeline()
    >>> fg.train.add_lora(pipe, ["blocks.1"], rank=4)[:2]
    ['blocks.1.attn2.to_q.lora_A.focal.weight', 'blocks.1.attn2.to_q.lora_B.focal.weight']
"""

from .lora import DEFAULT_PROJECTIONS, add_lora, lora_targets, save_lora

__all__ = ["DEFAULT_PROJECTIONS", "add_lora", "lora_targets", "save_lora"]
