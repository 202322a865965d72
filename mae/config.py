"""Stage configurations: flat dataclasses loaded from YAML files and ``key=value`` overrides.

Every training stage has one dataclass that extends :class:`TrainConfig` (the engine's knobs) with its own
flat keys. :func:`load_config` fills it from defaults ← YAML file ← ``--set key=value`` overrides (values are
parsed with ``yaml.safe_load``) and checks every key and value against the field types, so a typo fails
with one line naming it instead of being silently ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, TypeVar

import yaml

from mae.errors import UserError
from mae.registry.knobs import FITTED_TARGETS, KNOBS

C = TypeVar("C")


@dataclass
class TrainConfig:
    """Knobs of the shared training loop (:func:`mae.engine.fit`).

    ``batch_size`` is the *global* batch of one optimizer step, as in the paper: each of the ``world_size``
    processes loads ``batch_size / (world_size * accum_iter)`` images per forward pass (:func:`batch_plan`),
    and ``lr = base_lr * batch_size / 256`` unless ``lr`` is given (absolute), whatever the split.
    """

    stage: ClassVar[str] = "train"

    epochs: int = 100
    batch_size: int = 64
    accum_iter: int = 1
    base_lr: float = 1e-3
    lr: Optional[float] = None
    min_lr: float = 0.0
    warmup_epochs: float = 5.0
    weight_decay: float = 0.05
    optimizer: Literal["adamw", "lars", "sgd"] = "adamw"
    betas: tuple[float, float] = (0.9, 0.95)
    momentum: float = 0.9
    clip_grad: Optional[float] = None
    # autocast precision; auto: bf16 where the device computes it fast, fp16 (+ scaler) on CUDA without bf16,
    # fp32 otherwise (mae.engine.precision); metrics.json records amp_used and amp_reason
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"
    seed: int = 0
    num_workers: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = 20
    save_every: int = 1
    eval_every: int = 0
    compile: bool = False
    tensorboard: bool = True  # scalars (loss, lr, img/s, eval metrics) as TensorBoard events in OUT/tensorboard
    # a checkpoint in OUT made with other settings: "refuse" (an error naming the key) or "restart" from zero
    # (what the workflow passes: Snakemake reruns a job only when its settings or inputs changed)
    on_change: Literal["refuse", "restart"] = "refuse"
    max_steps: Optional[int] = None

    def check(self) -> None:
        """Range checks beyond types; subclasses extend it (call ``super().check()``)."""
        positive = ["epochs", "batch_size", "accum_iter", "log_every", "save_every"]
        for key in positive:
            if getattr(self, key) < 1:
                raise UserError(f"{key}={getattr(self, key)!r} for {self.stage} must be >= 1")
        for key in ["base_lr", "min_lr", "warmup_epochs", "weight_decay", "num_workers", "eval_every"]:
            if getattr(self, key) < 0:
                raise UserError(f"{key}={getattr(self, key)!r} for {self.stage} must be >= 0")
        if self.lr is not None and self.lr < 0:
            raise UserError(f"lr={self.lr!r} for {self.stage} must be >= 0")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise UserError(f"clip_grad={self.clip_grad!r} for {self.stage} must be > 0 (or null)")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"max_steps={self.max_steps!r} for {self.stage} must be >= 1 (or null)")


def effective_lr(cfg: TrainConfig) -> float:
    """Absolute peak lr: ``cfg.lr`` if set, else ``base_lr * batch_size / 256`` (the global batch)."""
    if cfg.lr is not None:
        return float(cfg.lr)
    return cfg.base_lr * cfg.batch_size / 256


def per_process_batch(global_batch: int, world_size: int, accum_iter: int, stage: str = "train") -> int:
    """Images per forward pass of one process; the global batch must split evenly."""
    parts = world_size * accum_iter
    if global_batch % parts:
        raise UserError(
            f"batch_size={global_batch} for {stage} does not split over world_size={world_size} x "
            f"accum_iter={accum_iter} = {parts} (batch sizes are global): choose a multiple of {parts}"
        )
    return global_batch // parts


def batch_plan(cfg: TrainConfig, world_size: int, global_batch: int | None = None) -> dict:
    """How one optimizer step is split (what ``metrics.json`` and ``settings.json`` record). ``global_batch``:
    the batch the task's loader actually asks for when it differs from ``cfg.batch_size`` (a tiny split)."""
    batch = cfg.batch_size if global_batch is None else global_batch
    return {
        "world_size": world_size,
        "accum_iter": cfg.accum_iter,
        "global_batch": batch,
        "batch_per_process": per_process_batch(batch, world_size, cfg.accum_iter, cfg.stage),
        "peak_lr": effective_lr(cfg),
    }


@dataclass
class PretrainConfig(TrainConfig):
    """MAE pretraining (paper recipe defaults: AdamW β=(0.9, 0.95), wd 0.05, base_lr 1.5e-4, mask 75 %)."""

    stage: ClassVar[str] = "pretrain"

    epochs: int = KNOBS["epochs"].default
    warmup_epochs: float = 40.0
    base_lr: float = 1.5e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)

    # the pretraining knobs (mae.registry.knobs declares their choices, ranges and defaults)
    model: str = KNOBS["model"].default
    mask_ratio: float = KNOBS["mask_ratio"].default
    decoder_depth: Optional[int] = KNOBS["decoder_depth"].default
    decoder_width: Optional[int] = KNOBS["decoder_width"].default
    mask_token_in_encoder: bool = KNOBS["mask_token_in_encoder"].default
    target: str = KNOBS["target"].default
    aug: str = KNOBS["aug"].default
    sampling: str = KNOBS["sampling"].default

    decoder_heads: Optional[int] = None  # decoder_num_heads; None: the model's default
    target_path: Optional[str] = None  # fitted PCA / tokenizer file for target=pca|token
    img_size: Optional[int] = None  # None: the dataset's image size
    eval_images: int = 1024  # val images for the reconstruction-loss monitor (0: skip)

    def check(self) -> None:
        super().check()
        for name in KNOBS:
            value = getattr(self, name)
            if value is not None or KNOBS[name].default is not None:
                KNOBS[name].check(value, "pretrain")
        for key in ["decoder_heads", "img_size"]:
            value = getattr(self, key)
            if value is not None and value < 1:
                raise UserError(f"{key}={value!r} for pretrain must be >= 1 (or null)")
        if self.target in FITTED_TARGETS and not self.target_path:
            raise UserError(f"target={self.target} needs target_path (the fitted {self.target} file)")


# ----------------------------------------------------------------------------------------------- loading


def config_keys(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def load_config(cls: type[C], path: str | Path | None = None, overrides: Iterable[str] = ()) -> C:
    """Defaults of ``cls`` ← YAML mapping in ``path`` ← ``key=value`` overrides; validated."""
    stage = getattr(cls, "stage", cls.__name__)
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = load_yaml_strict(path.read_text(), str(path))
        except OSError as err:
            raise UserError(f"cannot read config file {path}: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise UserError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"config file {path} must hold a mapping of key: value, not {type(loaded).__name__}")
        for key, value in loaded.items():
            values[_check_key(cls, str(key), stage, f" (in {path})")] = value
    for item in overrides:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"override {item!r} must look like key=value")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        values[_check_key(cls, key, stage, "")] = value
    return config_from_mapping(cls, values)


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a mapping with the same key twice (YAML keeps the last silently)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise UserError(
                f"{loader.name}: key '{key}' appears twice in one mapping (line "
                f"{key_node.start_mark.line + 1}); YAML would keep the last one silently"
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_yaml_strict(text: str, name: str = "<config>") -> Any:
    """YAML text as Python values (safe types only); a key given twice in one mapping is a ``UserError``."""
    loader = _StrictLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def config_from_mapping(cls: type[C], values: dict[str, Any], where: str = "") -> C:
    """``cls`` from a mapping of its keys (defaults for the rest), every key and value checked; ``where`` is
    added to an unknown-key message (e.g. " (in the study config's 'pretrain:')")."""
    stage = getattr(cls, "stage", cls.__name__)
    for key in values:
        _check_key(cls, str(key), stage, where)
    hints = typing.get_type_hints(cls)
    kwargs = {key: _coerce(value, hints[key], key, stage) for key, value in values.items()}
    cfg = cls(**kwargs)
    if hasattr(cfg, "check"):
        cfg.check()
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    out = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _check_key(cls: type, key: str, stage: str, where: str) -> str:
    valid = config_keys(cls)
    if key not in valid:
        raise UserError(f"unknown key '{key}' for {stage}{where} (valid: {', '.join(valid)})")
    return key


def _coerce(value: Any, hint: Any, key: str, stage: str) -> Any:
    """Return ``value`` converted to the field type ``hint``, or raise a UserError naming key and value."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, stage)
            except UserError as err:
                errors.append(err)
        raise errors[0]
    if origin is Literal:
        if value in args:
            return value
        choices = ", ".join(repr(a) for a in args)
        raise UserError(f"bad value {key}={value!r} for {stage} (choices: {choices})")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"bad value {key}={value!r} for {stage} (expected a list)")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise UserError(f"bad value {key}={value!r} for {stage} (expected {len(args)} items)")
            items = [_coerce(v, a, key, stage) for v, a in zip(value, args)]
        else:
            item_hint = args[0] if args else Any
            items = [_coerce(v, item_hint, key, stage) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise UserError(f"bad value {key}={value!r} for {stage} (expected a mapping)")
        return dict(value)
    return _coerce_scalar(value, hint, key, stage)


def _coerce_scalar(value: Any, hint: Any, key: str, stage: str) -> Any:
    """``value`` as a bool / int / float / str (``hint``), or a UserError naming key and value."""
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"bad value {key}={value!r} for {stage} (expected true or false)")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"bad value {key}={value!r} for {stage} (expected an integer)")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # yaml reads '1e-3' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"bad value {key}={value!r} for {stage} (expected a number)")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"bad value {key}={value!r} for {stage} (expected a string)")
    return value


# ------------------------------------------------------------------------------------------------ CLI


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every training command shares: --data --out --config --set --device."""
    parser.add_argument("--data", required=True, help="prepared dataset folder (mae prepare-data output)")
    parser.add_argument("--out", required=True, help="output folder (created; resumes if it holds a checkpoint)")
    parser.add_argument("--config", default=None, help="YAML file of key: value settings for this stage")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting (repeatable; value parsed as YAML)",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="device (default: config)")


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    """load_config from the common arguments (``--device`` wins over the config's ``device``)."""
    overrides = list(getattr(args, "overrides", None) or [])
    if getattr(args, "device", None):
        overrides.append(f"device={args.device}")
    return load_config(cls, getattr(args, "config", None), overrides)
