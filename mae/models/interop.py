"""Our models and weights in other libraries' names: timm's architectures and Hugging Face transformers' ViTMAE.

:data:`TIMM_NAMES` maps our model names to the timm architectures of the same encoder (:func:`timm_model_name`
the other way, for timm hub names and timm model folders).

The Hugging Face transformers names of our weights (both ways: :func:`to_hf`, :func:`from_hf`): one table of
module names (:data:`HF_NAMES`), one of names inside a block (:data:`HF_BLOCK_NAMES`); our fused ``attn.qkv``
is their ``query``, ``key`` and ``value``. :func:`hf_config` and :func:`hf_settings` translate a ViTMAE
``config.json``.

Used by :mod:`mae.models.checkpoint` (reading Hugging Face ViTMAE and timm folders), :mod:`mae.models.hub`
(``timm:NAME`` weights) and ``mae export`` (:mod:`mae.tools.export`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mae.errors import UserError
from mae.models.specs import infer_model_name

# ----------------------------------------------------------------------------------------------------- timm
#: our model names -> timm's architecture of the same encoder
TIMM_NAMES = {
    "mae_vit_base_patch16": "vit_base_patch16_224",
    "mae_vit_large_patch16": "vit_large_patch16_224",
    "mae_vit_huge_patch14": "vit_huge_patch14_224",
}


def timm_model_name(timm_name: str) -> str | None:
    """Our model name for a timm architecture (``vit_base_patch16_224.mae`` -> ``mae_vit_base_patch16``)."""
    arch = timm_name.partition(".")[0]
    return next((ours for ours, theirs in TIMM_NAMES.items() if theirs == arch), None)


# ---------------------------------------------------------------------------------------------- Hugging Face
#: our module names -> Hugging Face transformers' ViTMAE names as the Hub stores them (facebook/vit-mae-base)
HF_NAMES = {
    "cls_token": "vit.embeddings.cls_token",
    "pos_embed": "vit.embeddings.position_embeddings",
    "patch_embed.proj": "vit.embeddings.patch_embeddings.projection",
    "blocks": "vit.encoder.layer",
    "norm": "vit.layernorm",
    "decoder_embed": "decoder.decoder_embed",
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.decoder_pos_embed",
    "decoder_blocks": "decoder.decoder_layers",
    "decoder_norm": "decoder.decoder_norm",
    "decoder_pred": "decoder.decoder_pred",
}
#: inside an encoder or decoder block; our ``attn.qkv`` (rows: query, key, value) is their HF_QKV
HF_BLOCK_NAMES = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.output.dense",
    "norm2": "layernorm_after",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
HF_QKV = ("query", "key", "value")
#: names of newer transformers releases (in memory, and in some files they write) -> the Hub's, on reading
HF_NEWER_NAMES = (
    (r"^vit\.layers\.", "vit.encoder.layer."),
    (r"^decoder\.decoder_encoder\.layer\.", "decoder.decoder_layers."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
)
_OUR_BLOCK = re.compile(r"^(blocks|decoder_blocks)\.(\d+)\.(.+)\.(weight|bias)$")
_HF_BLOCK = re.compile(r"^(vit\.encoder\.layer|decoder\.decoder_layers)\.(\d+)\.(.+)\.(weight|bias)$")


def _renamed(key: str, table: Mapping[str, str]) -> str | None:
    """``key`` with its module name (the whole key, or all but the last part) looked up in ``table``."""
    module = key if key in table else key.rpartition(".")[0]
    return table[module] + key[len(module) :] if module in table else None


def is_hf_state(state: Mapping[str, Any]) -> bool:
    return any(
        k.startswith(("vit.embeddings.", "embeddings.patch_embeddings.", "decoder.decoder_embed.")) for k in state
    )


def to_hf_state(sd: Mapping[str, Any], source: str = "checkpoint") -> dict:
    """Our MAE state dict in the Hugging Face ViTMAE names (``attn.qkv`` split into query, key, value)."""
    out = {}
    for key, value in sd.items():
        block = _OUR_BLOCK.match(key)
        if block:
            stack, index, inner, kind = block.groups()
            base = f"{HF_NAMES[stack]}.{index}"
            if inner == "attn.qkv":
                for name, part in zip(HF_QKV, value.chunk(3), strict=True):
                    out[f"{base}.attention.attention.{name}.{kind}"] = part.clone()
                continue
            renamed = f"{base}.{HF_BLOCK_NAMES[inner]}.{kind}" if inner in HF_BLOCK_NAMES else None
        else:
            renamed = _renamed(key, HF_NAMES)
        if renamed is None:
            raise UserError(f"{source}: weight '{key}' has no counterpart in Hugging Face's ViTMAE")
        out[renamed] = value
    return out


def from_hf_state(state: Mapping[str, Any], source: str = "checkpoint") -> dict:
    """A Hugging Face ViTMAE state dict (the Hub's names or a newer release's; ``ViTMAEModel`` files without the
    ``vit.`` prefix) in our names (query, key and value fused into ``attn.qkv``)."""
    import torch

    ours, ours_block = {v: k for k, v in HF_NAMES.items()}, {v: k for k, v in HF_BLOCK_NAMES.items()}
    if not any(k.startswith(("vit.", "decoder.")) for k in state):  # ViTMAEModel's: the encoder alone
        state = {f"vit.{k}": v for k, v in state.items()}
    hub_names = {}
    for key, value in state.items():
        for pattern, replacement in HF_NEWER_NAMES:
            key = re.sub(pattern, replacement, key)
        hub_names[key] = value
    out, qkv = {}, {}
    for key, value in hub_names.items():
        block = _HF_BLOCK.match(key)
        if block:
            stack, index, inner, kind = block.groups()
            base = f"{ours[stack]}.{index}"
            part = inner.removeprefix("attention.attention.")
            if part in HF_QKV:
                qkv.setdefault(f"{base}.attn.qkv.{kind}", {})[part] = value
                continue
            renamed = f"{base}.{ours_block[inner]}.{kind}" if inner in ours_block else None
        else:
            renamed = _renamed(key, ours)
        if renamed is None:
            raise UserError(f"{source}: weight '{key}' has no counterpart in our MAE")
        out[renamed] = value
    for key, parts in qkv.items():
        if set(parts) != set(HF_QKV):
            raise UserError(f"{source}: {key}: the file lacks {sorted(set(HF_QKV) - set(parts))}")
        out[key] = torch.cat([parts[name] for name in HF_QKV])
    return out


def hf_config(arch: Mapping[str, Any]) -> dict:
    """The ``config.json`` of ViTMAEForPreTraining for a MAE of :func:`mae.models.checkpoint.architecture`
    (exact GELU as ours; the decoder uses the encoder's MLP ratio)."""

    def mlp(width: int) -> int:
        return int(round(width * arch["mlp_ratio"]))

    return {
        "architectures": ["ViTMAEForPreTraining"],
        "model_type": "vit_mae",
        "image_size": arch["img_size"],
        "patch_size": arch["patch_size"],
        "num_channels": arch["in_chans"],
        "hidden_size": arch["embed_dim"],
        "num_hidden_layers": arch["depth"],
        "num_attention_heads": arch["num_heads"],
        "intermediate_size": mlp(arch["embed_dim"]),
        "decoder_hidden_size": arch["decoder_width"],
        "decoder_num_hidden_layers": arch["decoder_depth"],
        "decoder_num_attention_heads": arch["decoder_heads"],
        "decoder_intermediate_size": mlp(arch["decoder_width"]),
        "hidden_act": "gelu",
        "qkv_bias": True,
        "layer_norm_eps": arch.get("layer_norm_eps", 1e-6),
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "mask_ratio": arch["mask_ratio"],
        "norm_pix_loss": arch["target"] == "norm_pixel",
    }


def hf_settings(config: Mapping[str, Any], source: str = "config.json") -> dict:
    """Our recorded settings (model name, heads, target, mask ratio, LayerNorm eps: the Hub's files say 1e-12,
    transformers' default, where ours say 1e-6) of a ViTMAE ``config.json``; refused when the architecture is not
    one our MAE builds."""

    width, depth, heads = (
        int(config.get(k, d)) for k, d in (("hidden_size", 768), ("num_hidden_layers", 12), ("num_attention_heads", 12))
    )
    ratio = int(config.get("intermediate_size", 4 * width)) / width
    decoder = int(config.get("decoder_hidden_size", 512))
    if config.get("hidden_act", "gelu") != "gelu" or not config.get("qkv_bias", True):
        raise UserError(
            f"{source}: hidden_act '{config.get('hidden_act')}' / qkv_bias "
            f"{config.get('qkv_bias')}: our MAE has exact GELU and a qkv bias"
        )
    if int(config.get("decoder_intermediate_size", 2048)) != int(round(decoder * ratio)):
        raise UserError(
            f"{source}: decoder_intermediate_size {config.get('decoder_intermediate_size')} is not "
            f"{ratio:g} x decoder_hidden_size (our decoder shares the encoder's MLP ratio)"
        )
    name = infer_model_name(int(config.get("patch_size", 16)), width, depth, ratio, heads)
    settings = {
        "model": name,
        "num_heads": heads,
        "decoder_heads": int(config.get("decoder_num_attention_heads", 16)),
        "target": "norm_pixel" if config.get("norm_pix_loss") else "pixel",
        "mask_ratio": float(config.get("mask_ratio", 0.75)),
        "layer_norm_eps": float(config.get("layer_norm_eps", 1e-12)),
    }
    return {k: v for k, v in settings.items() if v is not None}


def from_hf(state: Mapping[str, Any], config: Mapping[str, Any], source: str) -> dict:
    """The checkpoint object ``{'model', 'config'}`` of a Hugging Face ViTMAE folder's weights and config."""
    return {"model": from_hf_state(state, source), "config": hf_settings(config, f"{source}/config.json")}


def to_hf(sd: Mapping[str, Any], arch: Mapping[str, Any], source: str = "checkpoint") -> tuple[dict, dict]:
    """(state dict, config.json) of ViTMAEForPreTraining for our MAE ``sd`` described by ``arch``."""
    if arch.get("kind") != "mae":
        raise UserError(
            f"{source}: {arch.get('kind')} weights have no Hugging Face ViTMAE form "
            "(ViTMAEForPreTraining needs a pretraining checkpoint with its decoder; use --to timm or "
            "safetensors)"
        )
    if arch["target"] not in ("pixel", "norm_pixel") or arch["mask_token_in_encoder"]:
        what = "mask_token_in_encoder" if arch["mask_token_in_encoder"] else f"target '{arch['target']}'"
        raise UserError(
            f"{source}: {what} has no Hugging Face ViTMAE form (pixel or norm_pixel targets, "
            "visible tokens only); use --to safetensors"
        )
    return to_hf_state(sd, source), hf_config(arch)
