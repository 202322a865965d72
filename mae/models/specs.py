"""The named MAE architectures (encoder and default decoder), as keyword dicts of
:class:`~mae.models.mae.MaskedAutoencoderViT`: data only. The ``model`` choice table (mae.registry.choices) names
each; a plug-in model is a dict like these behind an entry point of ``mae_study.model``. The lookups below read
the table, so they see plug-ins and models registered in this process (:func:`mae.registry.choices.register`).
"""

from __future__ import annotations

from mae.registry import choices

mae_vit_base_patch16 = dict(
    img_size=224,
    patch_size=16,
    embed_dim=768,
    depth=12,
    num_heads=12,
    decoder_embed_dim=512,
    decoder_depth=8,
    decoder_num_heads=16,
    mlp_ratio=4.0,
)

mae_vit_large_patch16 = dict(
    img_size=224,
    patch_size=16,
    embed_dim=1024,
    depth=24,
    num_heads=16,
    decoder_embed_dim=512,
    decoder_depth=8,
    decoder_num_heads=16,
    mlp_ratio=4.0,
)

mae_vit_huge_patch14 = dict(
    img_size=224,
    patch_size=14,
    embed_dim=1280,
    depth=32,
    num_heads=16,
    decoder_embed_dim=512,
    decoder_depth=8,
    decoder_num_heads=16,
    mlp_ratio=4.0,
)

# CPU study models (32 px images, 4 px patches -> 8x8 grid)

mae_vit_tiny_patch4 = dict(
    img_size=32,
    patch_size=4,
    embed_dim=192,
    depth=12,
    num_heads=3,
    decoder_embed_dim=128,
    decoder_depth=4,
    decoder_num_heads=4,
    mlp_ratio=4.0,
)

mae_vit_micro_patch4 = dict(
    img_size=32,
    patch_size=4,
    embed_dim=128,
    depth=6,
    num_heads=4,
    decoder_embed_dim=128,
    decoder_depth=2,
    decoder_num_heads=4,
    mlp_ratio=4.0,
)

# the micro ViT made shallow and wide, the default study's next model (docs/calibration.md, "Levers": at the micro's
# cost it fine-tunes to 51.4 % where the micro gets 39.0)

mae_vit_shallow_patch4 = dict(
    img_size=32,
    patch_size=4,
    embed_dim=192,
    depth=3,
    num_heads=6,
    decoder_embed_dim=128,
    decoder_depth=2,
    decoder_num_heads=4,
    mlp_ratio=4.0,
)


ENCODER_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")


def model_specs() -> dict[str, dict]:
    """Every named architecture (encoder + default decoder): the ``model`` choice table's, plug-ins and models
    registered in this process included."""
    return {name: choices.load("model", name) for name in choices.names("model")}


def model_spec(name: str) -> dict:
    return dict(choices.load("model", name))


def list_models() -> list[str]:
    return choices.names("model")


def infer_model_name(
    patch_size: int, embed_dim: int, depth: int, mlp_ratio: float, num_heads: int | None = None
) -> str | None:
    """Our name of the encoder with these shapes (any image size), or None when none or several fit. The number of
    heads is not in the weights: without ``num_heads`` the shapes alone decide."""
    found = [
        name
        for name, spec in model_specs().items()
        if (spec["patch_size"], spec["embed_dim"], spec["depth"]) == (patch_size, embed_dim, depth)
        and abs(spec["mlp_ratio"] - mlp_ratio) < 1e-6
        and num_heads in (None, spec["num_heads"])
    ]
    return found[0] if len(found) == 1 else None
