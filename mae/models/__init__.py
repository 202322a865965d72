"""MAE models: the masked autoencoder, its downstream encoder, position tables and checkpoints.

``create_mae(name, **overrides)`` builds a named :class:`MaskedAutoencoderViT`; ``create_encoder`` the
matching timm ``VisionTransformer`` for fine-tuning / probing; ``load_encoder_checkpoint`` loads a MAE
checkpoint into it; ``resolve_init`` turns an ``--init`` spec (file, folder, URL, ``timm:NAME``) into weights to
load; ``infer_model_name`` finds our name of an encoder's shapes and heads.
"""

from __future__ import annotations

from mae.errors import UserError
from mae.models.checkpoint import load_mae_checkpoint, save_mae_checkpoint
from mae.models.mae import MaskedAutoencoderViT

# architecture of each named model (encoder + decoder); create_encoder uses the encoder part
MODEL_SPECS: dict[str, dict] = {
    "mae_vit_base_patch16": dict(
        img_size=224,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        decoder_embed_dim=512,
        decoder_depth=8,
        decoder_num_heads=16,
        mlp_ratio=4.0,
    ),
    "mae_vit_large_patch16": dict(
        img_size=224,
        patch_size=16,
        embed_dim=1024,
        depth=24,
        num_heads=16,
        decoder_embed_dim=512,
        decoder_depth=8,
        decoder_num_heads=16,
        mlp_ratio=4.0,
    ),
    "mae_vit_huge_patch14": dict(
        img_size=224,
        patch_size=14,
        embed_dim=1280,
        depth=32,
        num_heads=16,
        decoder_embed_dim=512,
        decoder_depth=8,
        decoder_num_heads=16,
        mlp_ratio=4.0,
    ),
    # CPU study models (32 px images, 4 px patches -> 8x8 grid)
    "mae_vit_tiny_patch4": dict(
        img_size=32,
        patch_size=4,
        embed_dim=192,
        depth=12,
        num_heads=3,
        decoder_embed_dim=128,
        decoder_depth=4,
        decoder_num_heads=4,
        mlp_ratio=4.0,
    ),
    "mae_vit_micro_patch4": dict(
        img_size=32,
        patch_size=4,
        embed_dim=128,
        depth=6,
        num_heads=4,
        decoder_embed_dim=128,
        decoder_depth=2,
        decoder_num_heads=4,
        mlp_ratio=4.0,
    ),
    # the micro ViT made shallow and wide, the default study's next model (docs/calibration.md, "Levers": at the micro's
    # cost it fine-tunes to 51.4 % where the micro gets 39.0)
    "mae_vit_shallow_patch4": dict(
        img_size=32,
        patch_size=4,
        embed_dim=192,
        depth=3,
        num_heads=6,
        decoder_embed_dim=128,
        decoder_depth=2,
        decoder_num_heads=4,
        mlp_ratio=4.0,
    ),
}
ENCODER_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")


def model_spec(name: str) -> dict:
    if name not in MODEL_SPECS:
        raise UserError(f"unknown model '{name}' (valid: {', '.join(MODEL_SPECS)})")
    return dict(MODEL_SPECS[name])


def create_mae(name: str, **overrides) -> MaskedAutoencoderViT:
    """Named MAE with constructor keywords overridden (e.g. ``decoder_depth=1, target='pca'``)."""
    kwargs = model_spec(name)
    kwargs.update(overrides)
    try:
        return MaskedAutoencoderViT(**kwargs)
    except TypeError as err:
        raise UserError(f"bad model option for {name}: {err}") from err


def list_models() -> list[str]:
    return list(MODEL_SPECS)


def infer_model_name(
    patch_size: int, embed_dim: int, depth: int, mlp_ratio: float, num_heads: int | None = None
) -> str | None:
    """Our name of the encoder with these shapes (any image size), or None when none or several fit. The number of
    heads is not in the weights: without ``num_heads`` the shapes alone decide."""
    found = [
        name
        for name, spec in MODEL_SPECS.items()
        if (spec["patch_size"], spec["embed_dim"], spec["depth"]) == (patch_size, embed_dim, depth)
        and abs(spec["mlp_ratio"] - mlp_ratio) < 1e-6
        and num_heads in (None, spec["num_heads"])
    ]
    return found[0] if len(found) == 1 else None


from mae.models.encoder import create_encoder, encoder_kwargs, load_encoder_checkpoint  # noqa: E402
from mae.models.hub import resolve_init  # noqa: E402

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
    "MODEL_SPECS",
    "resolve_init",
    "infer_model_name",
]
