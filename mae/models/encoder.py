"""The MAE encoder for downstream use: a plain timm ``VisionTransformer`` of the same architecture.

Because it *is* a timm model, fine-tuned weights load with timm alone (no ``mae`` import needed)::

    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=1000, global_pool="avg")
    vit.load_state_dict(torch.load("finetune/checkpoint.pt")["model"])
    # CPU study models: add the architecture, e.g. **mae.models.encoder_kwargs("mae_vit_micro_patch4")
    # == img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4, mlp_ratio=4.0

``global_pool='avg'`` averages the patch tokens and applies ``fc_norm`` (the final ``norm`` becomes
Identity), as the reference fine-tuning model; ``'token'`` uses the cls token after the final norm (linear
probing). The position table includes the cls row (``class_token=True, no_embed_class=False``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path

import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from mae.errors import UserError
from mae.models.checkpoint import apply_layer_norm_eps, is_decoder_key, read_weights
from mae.models.pos_embed import resample_pos_embed
from mae.models.specs import ENCODER_KEYS, model_spec


def encoder_kwargs(name: str) -> dict:
    """VisionTransformer architecture keywords of a named MAE's encoder."""

    spec = model_spec(name)
    return {k: spec[k] for k in ENCODER_KEYS}


def create_encoder(
    name: str,
    num_classes: int,
    global_pool: str = "avg",
    drop_path_rate: float = 0.0,
    img_size: int | None = None,
    **overrides,
) -> VisionTransformer:
    """timm ``VisionTransformer`` with the encoder architecture of MAE ``name`` (e.g. ``mae_vit_micro_patch4``)."""
    if global_pool not in ("avg", "token"):
        raise UserError(f"global_pool must be 'avg' or 'token', got '{global_pool}'")
    kwargs = encoder_kwargs(name)
    if img_size is not None:
        kwargs["img_size"] = img_size
    kwargs.update(overrides)
    return VisionTransformer(
        num_classes=num_classes,
        global_pool=global_pool,
        drop_path_rate=drop_path_rate,
        qkv_bias=True,
        class_token=True,
        no_embed_class=False,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        **kwargs,
    )


def load_encoder_checkpoint(vit: VisionTransformer, path_or_state: str | Path | Mapping) -> dict:
    """Load MAE (or fine-tuned) weights into ``vit``; returns a report of what was loaded/skipped.

    Strict on the encoder: every ``cls_token``/``pos_embed``/``patch_embed``/``blocks`` key of ``vit`` must be
    in the checkpoint with a compatible shape. Ignored: ``decoder*``, ``mask_token``, ``encoder_mask_token``;
    ``norm.*`` when ``vit`` pools by average (its norm is Identity, ``fc_norm`` is trained anew); ``head.*``
    when its shape differs (new classifier). ``pos_embed`` is bicubically resampled (patch rows only) when
    the patch grid differs. A LayerNorm eps the checkpoint records (a Hugging Face ViTMAE folder's) is kept.
    """
    sd, config, source = read_weights(path_or_state)
    own = vit.state_dict()
    report = {"source": source, "ignored": [], "missing": [], "pos_embed_resampled": None}
    load = {}
    for key, value in sd.items():
        if is_decoder_key(key):
            report["ignored"].append(key)
        elif key not in own:
            if key.startswith(("norm.", "fc_norm.", "head.")):
                report["ignored"].append(key)
            else:
                raise UserError(f"{source}: unexpected key '{key}' for this encoder")
        elif key == "pos_embed" and value.shape != own[key].shape:
            prefix = vit.num_prefix_tokens
            if value.shape[-1] != own[key].shape[-1]:
                raise UserError(f"{source}: pos_embed width {value.shape[-1]} != encoder width {own[key].shape[-1]}")
            new = resample_pos_embed(value, tuple(vit.patch_embed.grid_size), prefix)
            report["pos_embed_resampled"] = (tuple(value.shape), tuple(new.shape))
            load[key] = new
        elif value.shape != own[key].shape:
            if key.startswith("head."):
                report["ignored"].append(key)
            else:
                raise UserError(
                    f"{source}: shape mismatch for '{key}': {tuple(value.shape)} vs {tuple(own[key].shape)}"
                )
        else:
            load[key] = value
    missing = [k for k in own if k not in load]
    required = [k for k in missing if not k.startswith(("head.", "fc_norm.", "norm."))]
    if required:
        raise UserError(f"{source}: encoder keys missing from checkpoint: {required[:5]}")
    vit.load_state_dict(load, strict=False)
    report["layer_norm_eps"] = apply_layer_norm_eps(vit, config)
    report["missing"] = missing
    report["loaded"] = len(load)
    return report
