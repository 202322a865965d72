"""MAE models: the masked autoencoder, its downstream encoder, position tables and checkpoints.

``create_mae(name, **overrides)`` builds a named :class:`MaskedAutoencoderViT`; ``create_encoder`` the
matching timm ``VisionTransformer`` for fine-tuning / probing; ``load_encoder_checkpoint`` loads a MAE
checkpoint into it; ``resolve_init`` turns an ``--init`` spec (file, folder, URL, ``timm:NAME``) into weights to
load; ``infer_model_name`` finds our name of an encoder's shapes and heads.
"""

from __future__ import annotations

from mae.errors import UserError
from mae.models.checkpoint import load_mae_checkpoint, save_mae_checkpoint
from mae.models.encoder import create_encoder, encoder_kwargs, load_encoder_checkpoint
from mae.models.hub import resolve_init
from mae.models.mae import MaskedAutoencoderViT
from mae.models.specs import ENCODER_KEYS, infer_model_name, list_models, model_spec, model_specs


def create_mae(name: str, **overrides) -> MaskedAutoencoderViT:
    """Named MAE with constructor keywords overridden (e.g. ``decoder_depth=1, target='pca'``)."""
    kwargs = model_spec(name)
    kwargs.update(overrides)
    try:
        return MaskedAutoencoderViT(**kwargs)
    except TypeError as err:
        raise UserError(f"bad model option for {name}: {err}") from err


__all__ = [
    "MaskedAutoencoderViT",
    "create_mae",
    "create_encoder",
    "encoder_kwargs",
    "load_encoder_checkpoint",
    "load_mae_checkpoint",
    "save_mae_checkpoint",
    "model_spec",
    "list_models",
    "model_specs",
    "resolve_init",
    "infer_model_name",
    "ENCODER_KEYS",
]
