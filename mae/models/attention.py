"""The one attention-kernel switch of the package (the MAE model and the downstream timm ViTs use it).

timm's ``Attention`` runs either the fused ``scaled_dot_product_attention`` (``fused_attn=True``) or an explicit
``softmax(QK^T)V``; both compute the same function. ``auto`` picks the explicit form under CPU bf16 autocast,
where the fused CPU backward in bf16 is slow (≈ 2× fewer images/s when fine-tuning the micro model), and the
fused kernel everywhere else.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from mae.errors import UserError

ATTENTION_CHOICES = ("sdpa", "math", "auto")


def check_attention(attention: str) -> str:
    if attention not in ATTENTION_CHOICES:
        raise UserError(f"unknown attention '{attention}' (valid: {', '.join(ATTENTION_CHOICES)})")
    return attention


def use_fused(attention: str, device: torch.device) -> bool:
    """Whether ``attention`` ('sdpa' | 'math' | 'auto') means the fused kernel for a forward on ``device`` now."""
    if attention != "auto":
        return attention == "sdpa"
    cpu_bf16 = (
        device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )
    return not cpu_bf16


def set_kernels(blocks: Iterable[nn.Module], fused: bool) -> None:
    """Switch the attention of timm ``Block``s to the fused (True) or explicit (False) kernel."""
    for block in blocks:
        attn = getattr(block, "attn", None)
        if attn is not None and getattr(attn, "fused_attn", fused) != fused:
            attn.fused_attn = fused


def auto_kernels(model: nn.Module) -> None:
    """Make every timm ``Attention`` of ``model`` pick its kernel per call by the ``auto`` rule (a forward
    pre-hook on each attention module, so that ``forward_features``, feature extraction and the transfer
    backbones, which do not go through ``model.forward``, follow it too)."""

    def select(module: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor):
            module.fused_attn = use_fused("auto", x.device)

    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.register_forward_pre_hook(select)
