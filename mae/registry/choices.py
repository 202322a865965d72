"""The choice tables: every named mask sampler, reconstruction target, pretraining augmentation and model,
declared once, as ``"module:object"`` (timm's way: a choice is named where the study reads it and defined where
the code is).

A name stays a string until :func:`load` imports its object, so listing the choices (the study planner, the
schema checks, ``mae --help``) imports no torch. The string knobs of :mod:`mae.registry.knobs` (``sampling``,
``target``, ``aug``, ``model``) take their choices from here, and the code builds its objects through here
(:func:`mae.models.masking.build_sampler`, :func:`mae.models.targets.build_target`,
:func:`mae.data.transforms.pretrain_transform`, :func:`mae.models.model_spec`).

What each kind's object is:

- ``sampling``: a :class:`~mae.models.masking.MaskSampler` subclass, built with no arguments;
- ``target``: a :class:`~mae.models.targets.Target` subclass; ``cls.create(patch_size, in_chans, path)`` builds it;
- ``aug``: a function ``(img_size) -> transform`` of a PIL image or uint8 tensor to a float tensor;
- ``model``: a dict of :class:`~mae.models.mae.MaskedAutoencoderViT` keywords (encoder and default decoder).

**Plug-ins.** An installed package adds a choice through the entry-point group ``mae_study.<kind>``, in its
``pyproject.toml``::

    [project.entry-points."mae_study.sampling"]
    checker = "my_package.samplers:CheckerSampler"

Entry points are package metadata, so the choice exists in every process (``snakemake`` planning the study and
each ``mae pretrain`` it starts), not only in the one that imported the plug-in. :func:`register` adds one in
this process only (tests, notebooks).
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib import metadata
from typing import Any

from mae.errors import UserError

M, T, D, S = "mae.models.masking:", "mae.models.targets:", "mae.data.transforms:", "mae.models.specs:"
#: kind -> name -> "module:object", the shipped choices
BUILTIN: dict[str, dict[str, str]] = {
    "sampling": {"random": M + "RandomSampler", "block": M + "BlockSampler", "grid": M + "GridSampler"},
    "target": {
        "pixel": T + "PixelTarget",
        "norm_pixel": T + "NormPixelTarget",
        "pca": T + "PCATarget",
        "token": T + "TokenTarget",
    },
    "aug": {
        "none": D + "aug_none",
        "crop_fixed": D + "aug_crop_fixed",
        "crop_rand": D + "aug_crop_rand",
        "crop_rand_jitter": D + "aug_crop_rand_jitter",
    },
    "model": {
        name: S + name
        for name in (
            "mae_vit_base_patch16",
            "mae_vit_large_patch16",
            "mae_vit_huge_patch14",
            "mae_vit_tiny_patch4",
            "mae_vit_micro_patch4",
            "mae_vit_shallow_patch4",
        )
    },
}
KINDS = tuple(BUILTIN)
NOUN = {"sampling": "sampler", "target": "target", "aug": "aug", "model": "model"}  # in messages
#: entry-point group of a kind's plug-ins
GROUP = "mae_study.{kind}"
_REGISTERED: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}


@cache
def plugins(kind: str) -> dict[str, str]:
    """name -> "module:object" of the installed packages' choices of ``kind`` (read from metadata, not imported)."""
    return {ep.name: ep.value for ep in metadata.entry_points(group=GROUP.format(kind=kind))}


def table(kind: str) -> dict[str, Any]:
    """Every choice of ``kind``: the shipped ones, then the plug-ins', then those registered in this process."""
    if kind not in BUILTIN:
        raise UserError(f"unknown choice kind '{kind}' (valid: {', '.join(KINDS)})")
    return {**BUILTIN[kind], **plugins(kind), **_REGISTERED[kind]}


def names(kind: str) -> list[str]:
    return list(table(kind))


def resolve(spec: str, where: str) -> Any:
    """The object a ``"module:object"`` string names."""
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise UserError(f"{where}: cannot load {spec!r} ({err})") from None


def load(kind: str, name: str) -> Any:
    """The object of choice ``name`` of ``kind``, or a one-line :class:`UserError` listing the valid names."""
    choices = table(kind)
    if name not in choices:
        raise UserError(f"unknown {NOUN[kind]} '{name}' (valid: {', '.join(choices)})")
    value = choices[name]
    return resolve(value, f"{NOUN[kind]} '{name}'") if isinstance(value, str) else value


def register(kind: str, name: str, obj: Any) -> None:
    """Add a choice in this process (an object, or a ``"module:object"`` string); a plug-in package uses its entry
    points instead, which every process sees."""
    table(kind)
    _REGISTERED[kind][name] = obj


def unregister(kind: str, name: str) -> None:
    _REGISTERED[kind].pop(name, None)
