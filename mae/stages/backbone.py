"""The ViT backbone of the dense transfer tasks: the MAE encoder plus a ViTDet-style simple feature pyramid.

ViTDet (Li et al. 2022) keeps the plain, single-scale ViT and builds the pyramid only from its *last* feature
map (stride = patch size p): scale 4 = two stride-2 transposed convolutions, scale 2 = one, scale 1 = the
map itself, scale 1/2 = 2x2 max pooling; every level then gets a 1x1 and a 3x3 convolution, each followed by a
channel LayerNorm, to ``out_channels``. With p = 16 this gives strides 4, 8, 16, 32; at the study's scale
(32 px images, p = 4) the same factors give strides 1, 2, 4, 8 (32x32 ... 4x4 maps). Detection adds one more
level ('pool', a stride-2 subsampling of the coarsest map) for the RPN, as ViTDet/FPN do.

The encoder comes from :func:`mae.stages.classification.build_encoder`: a MAE pretrain checkpoint (``--init``, decoder
keys ignored), a fine-tuned classification model (the "supervised" row; its head is dropped) or a random
init (``--scratch``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mae.errors import UserError


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def _scale_stage(dim: int, scale: float) -> tuple[nn.Module, int]:
    """Resampling of the stride-p map by ``scale`` (4, 2, 1 or 0.5); returns (module, output channels)."""
    if scale == 4.0:
        half, quarter = max(dim // 2, 1), max(dim // 4, 1)
        return (
            nn.Sequential(
                nn.ConvTranspose2d(dim, half, kernel_size=2, stride=2),
                LayerNorm2d(half, eps=1e-6),
                nn.GELU(),
                nn.ConvTranspose2d(half, quarter, kernel_size=2, stride=2),
            ),
            quarter,
        )
    if scale == 2.0:
        half = max(dim // 2, 1)
        return nn.ConvTranspose2d(dim, half, kernel_size=2, stride=2), half
    if scale == 1.0:
        return nn.Identity(), dim
    if scale == 0.5:
        return nn.MaxPool2d(kernel_size=2, stride=2), dim
    raise UserError(f"scale_factors: unsupported value {scale!r} (valid: 4, 2, 1, 0.5)")


class SimpleFeaturePyramid(nn.Module):
    """Multi-scale maps from one stride-``patch_size`` ViT map (ViTDet's simple feature pyramid)."""

    def __init__(
        self,
        in_dim: int,
        out_channels: int,
        patch_size: int,
        scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        top_pool: bool = False,
    ):
        super().__init__()
        factors = [float(s) for s in scale_factors]
        if not factors or sorted(factors, reverse=True) != factors or len(set(factors)) != len(factors):
            raise UserError(
                f"scale_factors: {list(scale_factors)!r} must be distinct and decreasing (e.g. [4, 2, 1, 0.5])"
            )
        self.scale_factors = factors
        self.out_channels = out_channels
        self.top_pool = top_pool
        self.stages = nn.ModuleList()
        self.strides: list[float] = []
        for scale in factors:
            resample, ch = _scale_stage(in_dim, scale)
            self.stages.append(
                nn.Sequential(
                    resample,
                    nn.Conv2d(ch, out_channels, kernel_size=1, bias=False),
                    LayerNorm2d(out_channels, eps=1e-6),
                    nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
                    LayerNorm2d(out_channels, eps=1e-6),
                )
            )
            self.strides.append(patch_size / scale)
        if top_pool:
            self.strides.append(self.strides[-1] * 2)
        self.names = [str(i) for i in range(len(factors))] + (["pool"] if top_pool else [])

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for i, stage in enumerate(self.stages):
            out[str(i)] = stage(x)
        if self.top_pool:
            out["pool"] = F.max_pool2d(out[str(len(self.stages) - 1)], kernel_size=1, stride=2)
        return out


class ViTFeatureMap(nn.Module):
    """The last-block feature map of a timm ``VisionTransformer`` as an (N, D, H/p, W/p) tensor.

    Inputs smaller than the encoder's image size are zero-padded to it (bottom/right) and the map is cropped
    back, so a detector can feed any size up to ``img_size`` while the position table stays fixed.
    """

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit
        self.embed_dim = int(vit.embed_dim)
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.img_size = tuple(int(s) for s in vit.patch_embed.img_size)
        self.num_prefix_tokens = int(getattr(vit, "num_prefix_tokens", 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        H, W = self.img_size
        if h > H or w > W:
            raise UserError(f"img_size: input {h}x{w} is larger than the backbone's {H}x{W}")
        if (h, w) != (H, W):
            x = F.pad(x, (0, W - w, 0, H - h))
        tokens = self.vit.forward_features(x)[:, self.num_prefix_tokens :]
        p = self.patch_size
        fmap = tokens.transpose(1, 2).reshape(n, self.embed_dim, H // p, W // p)
        return fmap[:, :, : -(-h // p), : -(-w // p)]


class ViTPyramidBackbone(nn.Module):
    """Encoder + simple feature pyramid; ``out_channels`` for torchvision's detection heads."""

    def __init__(
        self,
        vit: nn.Module,
        out_channels: int,
        scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        top_pool: bool = False,
    ):
        super().__init__()
        self.body = ViTFeatureMap(vit)
        self.pyramid = SimpleFeaturePyramid(
            self.body.embed_dim, out_channels, self.body.patch_size, scale_factors, top_pool=top_pool
        )
        self.out_channels = out_channels

    @property
    def strides(self) -> list[float]:
        return self.pyramid.strides

    @property
    def names(self) -> list[str]:
        return self.pyramid.names

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.pyramid(self.body(x))


def build_vit(
    model_name: str | None,
    init: str | None,
    img_size: int,
    drop_path: float = 0.0,
) -> tuple[nn.Module, str, object]:
    """(timm ViT without a head, resolved model name, load report) from ``init`` or a random init.

    ``model_name`` None → the name recorded in the checkpoint (or the study default for a random init).
    A fine-tuned classifier's head and ``fc_norm`` are ignored.
    """
    from mae.stages.classification import build_encoder, resolve_model_name

    name = resolve_model_name(model_name, init)
    vit, report = build_encoder(
        name, num_classes=0, global_pool="token", drop_path=drop_path, img_size=img_size, init=init
    )
    return vit, name, report


def layer_decay_groups(
    model: nn.Module, backbone_vit: nn.Module, weight_decay: float, layer_decay: float
) -> list[dict]:
    """Optimizer groups: the ViT with layer-wise lr decay (ViTDet: 0.7 for ViT-B), the rest at lr_scale 1.

    The ViT's groups come from :func:`mae.engine.optim.param_groups_layer_decay`; their scales are those of a model
    whose "head" is the new detection/segmentation network: the stem at ``layer_decay ** (depth + 1)``, the
    last block at ``layer_decay``, the ViT's final norm (applied by ``forward_features``) at 1, as ViTDet's
    ``get_vit_lr_decay_rate``. Everything outside the ViT (pyramid, heads) gets the usual decay / no-decay split.
    """
    from mae.engine.optim import param_groups_layer_decay

    vit_ids = {id(p) for p in backbone_vit.parameters()}
    groups = param_groups_layer_decay(backbone_vit, weight_decay, layer_decay)

    rest_decay, rest_no = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in vit_ids:
            continue
        (rest_no if p.ndim <= 1 or name.endswith(".bias") else rest_decay).append(p)
    if rest_decay:
        groups.append({"params": rest_decay, "weight_decay": weight_decay, "lr_scale": 1.0})
    if rest_no:
        groups.append({"params": rest_no, "weight_decay": 0.0, "lr_scale": 1.0})
    return groups


def add_transfer_arguments(parser) -> None:
    """CLI options shared by the dense transfer commands (common options + ``--init``/``--scratch``)."""
    from mae.config import add_common_arguments
    from mae.stages.classification import add_init_arguments

    add_common_arguments(parser)
    add_init_arguments(parser)


def run_transfer(args, config_cls, task_cls, evaluation: str, metric_keys: Sequence[str]) -> int:
    """Build ``task_cls(cfg, data, init)`` from the CLI, train it with the engine's ``fit`` and write the
    metrics; a missing evaluation metric is an error (never an empty result)."""
    from mae.config import config_from_args
    from mae.stages.classification import init_label, run_task

    started = time.perf_counter()
    cfg = config_from_args(config_cls, args)
    torch.manual_seed(cfg.seed)
    init = None if args.scratch else args.init
    task = task_cls(cfg, args.data, init)
    metrics = run_task(
        task,
        cfg,
        args.out,
        evaluation=evaluation,
        init=init_label(args),
        init_path=init,
        data=args.data,
        model_name=task.model_name,
        extra={"dataset": task.dataset_name},
        started=started,
    )
    missing = [k for k in metric_keys if k not in metrics]
    if missing:
        raise UserError(f"{evaluation}: evaluation produced no {missing[0]}")
    return 0
