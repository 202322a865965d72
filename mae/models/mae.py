"""The masked autoencoder: a ViT encoder on the visible patches and a light decoder (He et al., 2021).

Built from timm's ``PatchEmbed`` and ``Block``; parameter names equal the reference implementation, so a
reference ``{'model': state_dict}`` file loads with ``strict=True`` (see ``mae.models.checkpoint``).
Reference behaviour (docs/ARCHITECTURE.md, "Reference facts"): fixed 2-D sin-cos position tables
(non-trainable Parameters, zero cls row)
added before masking; the random sampler is the reference draw; loss = per-patch loss averaged over removed
patches; xavier-uniform init of every Linear and of the patch projection viewed as a matrix, cls/mask token
normal(0.02), LayerNorm eps 1e-6.

Study options beyond the reference:
- ``sampler``: 'random' | 'block' | 'grid' (``mae.models.masking``);
- ``target``: 'pixel' | 'norm_pixel' | 'pca' | 'token' (``mae.models.targets``; ``norm_pix_loss=True`` ≡ 'norm_pixel');
  'token' makes ``decoder_pred`` output vocabulary logits, 'pca' the K coefficients;
- ``mask_token_in_encoder``: the encoder receives all L tokens, removed ones replaced by a learned
  ``encoder_mask_token`` (the only extra state-dict key) before the position table is added; the decoder
  then embeds the encoder output at every position (its own ``mask_token`` is kept for key compatibility
  but frozen and unused);
- ``attention``: 'sdpa' (timm's fused ``scaled_dot_product_attention``), 'math' (explicit softmax(QK^T)V)
  or 'auto' (math under CPU bf16 autocast, where the fused CPU backward is slow; SDPA otherwise).
  Both compute the same function; this only picks kernels.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from mae.errors import UserError
from mae.models.attention import check_attention, set_kernels, use_fused
from mae.models.masking import MaskSample, build_sampler
from mae.models.pos_embed import sincos_2d
from mae.models.targets import build_target, patchify, unpatchify


class MaskedAutoencoderViT(nn.Module):
    def __init__(
        self,
        img_size=224,
        patch_size=16,
        in_chans=3,
        embed_dim=1024,
        depth=24,
        num_heads=16,
        decoder_embed_dim=512,
        decoder_depth=8,
        decoder_num_heads=16,
        mlp_ratio=4.0,
        norm_layer=None,
        norm_pix_loss=False,
        sampler="random",
        target="pixel",
        target_path=None,
        mask_token_in_encoder=False,
        attention="auto",
    ):
        super().__init__()
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        if norm_pix_loss:
            if target not in ("pixel", "norm_pixel"):
                raise UserError(f"norm_pix_loss=True conflicts with target '{target}'")
            target = "norm_pixel"
        self.patch_size, self.in_chans = patch_size, in_chans
        self.target_kind, self.attention = target, check_attention(attention)
        self.norm_pix_loss = target == "norm_pixel"
        self.mask_token_in_encoder = bool(mask_token_in_encoder)
        self.sampler = build_sampler(sampler)
        # the target is not a registered submodule: its tables/tokenizer must not enter the state dict
        self.__dict__["target_fn"] = build_target(target, patch_size, in_chans, target_path)

        # ---- encoder
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        if self.mask_token_in_encoder:
            self.encoder_mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)
        )
        self.norm = norm_layer(embed_dim)

        # ---- decoder
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.target_fn.out_dim, bias=True)
        if self.mask_token_in_encoder:
            self.mask_token.requires_grad_(False)  # unused: keeps the reference key set; frozen for DDP
        self.initialize_weights()

    # ------------------------------------------------------------------------------------------ set-up
    def initialize_weights(self) -> None:
        self.pos_embed.data.copy_(sincos_2d(self.pos_embed.shape[-1], self.grid_size, cls_token=True)[None])
        self.decoder_pos_embed.data.copy_(
            sincos_2d(self.decoder_pos_embed.shape[-1], self.grid_size, cls_token=True)[None]
        )
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        if self.mask_token_in_encoder:
            nn.init.normal_(self.encoder_mask_token, std=0.02)
        self.apply(self._init_module)

    @staticmethod
    def _init_module(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _apply(self, fn, *args, **kwargs):  # .to()/.cuda() also move the (unregistered) target tables
        super()._apply(fn, *args, **kwargs)
        self.target_fn._apply(fn, *args, **kwargs)
        return self

    def no_weight_decay(self) -> set[str]:
        names = {"cls_token", "mask_token", "pos_embed", "decoder_pos_embed"}
        return names | ({"encoder_mask_token"} if self.mask_token_in_encoder else set())

    def set_attention(self, attention: str) -> None:
        self.attention = check_attention(attention)

    def _select_attention_kernels(self, device: torch.device) -> None:
        set_kernels((*self.blocks, *self.decoder_blocks), use_fused(self.attention, device))

    # ------------------------------------------------------------------------------------------ layout
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        return unpatchify(x, self.patch_size, self.in_chans, self.grid_size)

    def random_masking(self, x: torch.Tensor, mask_ratio: float, sample: MaskSample | None = None):
        """Keep a subset of the (N, L, D) tokens with the configured sampler (or the given ``sample``) ->
        (x_kept, mask, ids_restore)."""
        n, _, d = x.shape
        sample = sample or self.sampler(n, self.grid_size, mask_ratio, device=x.device)
        x_kept = torch.gather(x, 1, sample.ids_keep.unsqueeze(-1).expand(-1, -1, d))
        return x_kept, sample.mask.to(x.dtype), sample.ids_restore

    # ------------------------------------------------------------------------------------------ forward
    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, sample: MaskSample | None = None):
        self._select_attention_kernels(imgs.device)
        x = self.patch_embed(imgs)
        if self.mask_token_in_encoder:
            n, num_patches, d = x.shape
            sample = sample or self.sampler(n, self.grid_size, mask_ratio, device=x.device)
            mask, ids_restore = sample.mask, sample.ids_restore
            removed = mask.unsqueeze(-1).to(torch.bool)
            x = torch.where(removed, self.encoder_mask_token.to(x.dtype), x) + self.pos_embed[:, 1:, :]
        else:
            x = x + self.pos_embed[:, 1:, :]
            x, mask, ids_restore = self.random_masking(x, mask_ratio, sample)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask.float(), ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        num_patches = ids_restore.shape[1]
        if x.shape[1] != num_patches + 1:  # visible tokens only: append mask tokens, restore the patch order
            n, _, d = x.shape
            mask_tokens = self.mask_token.to(x.dtype).expand(n, num_patches + 1 - x.shape[1], -1)
            x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
            x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
            x = torch.cat([x[:, :1, :], x_], dim=1)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:, :]

    def forward_target(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.target_fn.compute(imgs, self.patchify(imgs))

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-patch loss of the configured target, averaged over removed patches (mask == 1) only."""
        loss = self.target_fn.per_patch_loss(pred, self.forward_target(imgs))
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, sample: MaskSample | None = None):
        """(loss, pred, mask). ``sample``: the masks to use (default: drawn by the configured sampler)."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, sample)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask
