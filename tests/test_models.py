import math
from functools import partial

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from mae.errors import UserError
from mae.models import (
    create_encoder,
    create_mae,
    encoder_kwargs,
    load_encoder_checkpoint,
    model_specs,
)
from mae.models.checkpoint import load_mae_checkpoint, save_mae_checkpoint
from mae.models.pos_embed import resample_pos_embed, sincos_2d

REFERENCE_KEYS_HEAD = [
    "cls_token",
    "pos_embed",
    "mask_token",
    "decoder_pos_embed",
    "patch_embed.proj.weight",
    "patch_embed.proj.bias",
]
BLOCK_KEYS = [
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
]


def small(**kw):
    return create_mae("mae_vit_micro_patch4", **kw)


def expected_keys(depth, decoder_depth):
    keys = list(REFERENCE_KEYS_HEAD)
    keys += [f"blocks.{i}.{k}" for i in range(depth) for k in BLOCK_KEYS] + ["norm.weight", "norm.bias"]
    keys += ["decoder_embed.weight", "decoder_embed.bias"]
    keys += [f"decoder_blocks.{j}.{k}" for j in range(decoder_depth) for k in BLOCK_KEYS]
    keys += ["decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"]
    return keys


# ----------------------------------- independent reference (docs/ARCHITECTURE.md, "Reference facts"; fp32 eager)
def ref_sincos(dim, grid):
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = pos.reshape(-1).double()[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], 1)

    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    emb = torch.cat([one_d(dim // 2, xs), one_d(dim // 2, ys)], 1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), emb]).float()[None]


class ReferenceMAE(nn.Module):
    """Plain transcription of the reference facts (docs/ARCHITECTURE.md) with timm Blocks (default attention) —
    shares weights by state dict."""

    def __init__(
        self,
        img_size,
        patch_size,
        embed_dim,
        depth,
        num_heads,
        decoder_embed_dim,
        decoder_depth,
        decoder_num_heads,
        mlp_ratio,
        norm_pix,
    ):
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.p, self.norm_pix = patch_size, norm_pix
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(ref_sincos(embed_dim, int(n**0.5)), requires_grad=False)
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)]
        )
        self.norm = norm(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(ref_sincos(decoder_embed_dim, int(n**0.5)), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [
                Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm)
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = norm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * 3)

    def forward(self, imgs, ratio):
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        n, num, d = x.shape
        len_keep = int(num * (1 - ratio))
        noise = torch.rand(n, num, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :len_keep, None].repeat(1, 1, d))
        mask = torch.ones(n, num)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(n, -1, -1), x], 1)
        for b in self.blocks:
            x = b(x)
        x = self.decoder_embed(self.norm(x))
        tokens = self.mask_token.repeat(n, num + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:], tokens], 1)
        x_ = torch.gather(x_, 1, ids_restore[..., None].repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1], x_], 1) + self.decoder_pos_embed
        for b in self.decoder_blocks:
            x = b(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        p, h = self.p, imgs.shape[2] // self.p
        target = imgs.reshape(n, 3, h, p, h, p).permute(0, 2, 4, 3, 5, 1).reshape(n, h * h, p * p * 3)
        if self.norm_pix:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(-1)
        return (loss * mask).sum() / mask.sum(), pred, mask


@pytest.mark.parametrize("norm_pix", [False, True])
@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_matches_reference_transcription(norm_pix, attention):
    torch.manual_seed(0)
    ours = small(norm_pix_loss=norm_pix, attention=attention).eval()
    spec = {k: v for k, v in model_specs()["mae_vit_micro_patch4"].items()}
    ref = ReferenceMAE(norm_pix=norm_pix, **spec).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    assert torch.equal(ref.pos_embed, ours.pos_embed) and torch.equal(ref.decoder_pos_embed, ours.decoder_pos_embed)
    imgs = torch.randn(3, 3, 32, 32)
    torch.manual_seed(42)
    loss, pred, mask = ours(imgs, 0.75)
    torch.manual_seed(42)
    rloss, rpred, rmask = ref(imgs, 0.75)
    assert torch.equal(mask, rmask)
    assert torch.allclose(pred, rpred, atol=1e-5, rtol=1e-5)
    assert abs(loss.item() - rloss.item()) < 1e-5


def test_state_dict_keys_are_reference_and_file_loads_strictly(tmp_path):
    model = small()
    assert list(model.state_dict()) == expected_keys(6, 2)
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    save_mae_checkpoint(model, tmp_path / "ck.pt", epoch=3)
    other = small()
    load_mae_checkpoint(other, tmp_path / "ck.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    raw = {"model": model.state_dict()}
    torch.save(raw, tmp_path / "raw.pt")
    small().load_state_dict(torch.load(tmp_path / "raw.pt")["model"], strict=True)
    with pytest.raises(UserError, match="keys do not match"):
        load_mae_checkpoint(create_mae("mae_vit_micro_patch4", decoder_depth=1), tmp_path / "ck.pt")


def test_init_facts():
    model = small()
    assert torch.equal(model.pos_embed[0, 0], torch.zeros(128))
    assert model.norm.eps == 1e-6 and model.blocks[0].norm1.eps == 1e-6
    assert model.blocks[0].attn.qkv.bias is not None
    w = model.blocks[0].attn.qkv.weight.detach()
    bound = math.sqrt(6 / (w.shape[0] + w.shape[1]))
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.9 * bound  # xavier on qkv as one matrix
    assert float(model.blocks[0].attn.qkv.bias.detach().abs().max()) == 0
    assert 0.01 < float(model.cls_token.detach().std()) < 0.03
    # 2-D sin-cos: first half of channels varies along columns only
    table = sincos_2d(8, 4)
    grid = table.view(4, 4, 8)
    assert torch.equal(grid[0, :, :4], grid[3, :, :4]) and torch.equal(grid[:, 0, 4:], grid[:, 2, 4:])


def test_loss_counts_removed_patches_only():
    torch.manual_seed(0)
    model = small(norm_pix_loss=True)
    imgs = torch.randn(2, 3, 32, 32)
    loss, pred, mask = model(imgs)
    assert (mask.sum(1) == 64 - 16).all()
    changed = pred.detach().clone()
    changed[mask == 0] += 100.0  # kept patches: must not matter
    assert torch.allclose(model.forward_loss(imgs, changed, mask), loss.detach())
    changed[mask == 1] += 1.0
    assert not torch.allclose(model.forward_loss(imgs, changed, mask), loss.detach())


def test_mask_token_in_encoder_extra_key_and_forward():
    torch.manual_seed(0)
    model = small(mask_token_in_encoder=True)
    keys = list(model.state_dict())
    assert set(keys) - set(expected_keys(6, 2)) == {"encoder_mask_token"}
    seen = []
    model.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    loss, pred, mask = model(torch.randn(2, 3, 32, 32))
    assert seen[0] == (2, 65, 128) and pred.shape == (2, 64, 48)
    loss.backward()
    assert model.encoder_mask_token.grad is not None and model.mask_token.grad is None
    # same seed -> same mask as the visible-only model (one shared sampler draw)
    visible_only = small()
    imgs = torch.randn(1, 3, 32, 32)
    torch.manual_seed(5)
    m1 = model(imgs)[2]
    torch.manual_seed(5)
    m2 = visible_only(imgs)[2]
    assert torch.equal(m1, m2)


@pytest.mark.parametrize("sampler", ["block", "grid"])
def test_samplers_in_model(sampler):
    torch.manual_seed(0)
    loss, pred, mask = small(sampler=sampler)(torch.randn(2, 3, 32, 32), 0.75)
    assert (mask.sum(1) == 48).all() and torch.isfinite(loss)


def test_bf16_fast_path_close_to_fp32():
    torch.manual_seed(0)
    model = small(norm_pix_loss=True, attention="auto")
    imgs = torch.randn(4, 3, 32, 32)
    torch.manual_seed(1)
    loss32, _, mask32 = model(imgs)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, _, mask16 = model(imgs)
    assert model.blocks[0].attn.fused_attn is False  # 'auto' picks math attention under CPU bf16
    assert torch.equal(mask32, mask16)
    assert abs(loss16.item() - loss32.item()) / loss32.item() < 2e-2


def test_factories_and_errors():
    assert set(model_specs()) >= {
        "mae_vit_base_patch16",
        "mae_vit_large_patch16",
        "mae_vit_huge_patch14",
        "mae_vit_tiny_patch4",
        "mae_vit_micro_patch4",
    }
    h = model_specs()["mae_vit_huge_patch14"]
    assert (
        h["patch_size"],
        h["embed_dim"],
        h["depth"],
        h["decoder_embed_dim"],
        h["decoder_depth"],
        h["decoder_num_heads"],
    ) == (14, 1280, 32, 512, 8, 16)
    m = create_mae("mae_vit_micro_patch4", decoder_depth=1, decoder_embed_dim=64)
    assert len(m.decoder_blocks) == 1 and m.decoder_pred.in_features == 64
    with pytest.raises(UserError, match="unknown model"):
        create_mae("nope")
    with pytest.raises(UserError, match="bad model option"):
        create_mae("mae_vit_micro_patch4", decoder_wdth=3)
    with pytest.raises(UserError, match="norm_pix_loss"):
        small(norm_pix_loss=True, target="token")


# ------------------------------------------------------------------ downstream encoder
def test_encoder_loads_mae_checkpoint_with_interpolation(tmp_path):
    torch.manual_seed(0)
    mae = small()
    save_mae_checkpoint(mae, tmp_path / "pre.pt")
    vit = create_encoder("mae_vit_micro_patch4", num_classes=10, global_pool="avg", img_size=48)
    report = load_encoder_checkpoint(vit, tmp_path / "pre.pt")
    assert report["pos_embed_resampled"] == ((1, 65, 128), (1, 145, 128))
    assert set(report["missing"]) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert "mask_token" in report["ignored"] and "norm.weight" in report["ignored"]
    assert torch.equal(vit.blocks[2].attn.qkv.weight, mae.blocks[2].attn.qkv.weight)
    assert torch.equal(vit.pos_embed[0, 0], mae.pos_embed[0, 0])
    expected = resample_pos_embed(mae.pos_embed.data, (12, 12))
    assert torch.allclose(vit.pos_embed, expected)
    assert vit(torch.randn(1, 3, 48, 48)).shape == (1, 10)
    # same resolution, token pooling: encoder output equals the MAE encoder with nothing masked
    probe = create_encoder("mae_vit_micro_patch4", num_classes=0, global_pool="token")
    load_encoder_checkpoint(probe, {"model": mae.state_dict()})
    x = torch.randn(2, 3, 32, 32)
    feats = probe.forward_features(x)
    latent, _, ids_restore = mae.forward_encoder(x, 0.0)
    restored = torch.gather(latent[:, 1:], 1, ids_restore[..., None].expand(-1, -1, 128))
    assert torch.allclose(feats[:, 0], latent[:, 0], atol=1e-5) and torch.allclose(feats[:, 1:], restored, atol=1e-5)


def test_encoder_loader_rejects_incomplete_checkpoint():
    mae = small()
    sd = {k: v for k, v in mae.state_dict().items() if not k.startswith("blocks.3.")}
    vit = create_encoder("mae_vit_micro_patch4", num_classes=10)
    with pytest.raises(UserError, match="missing"):
        load_encoder_checkpoint(vit, sd)


def test_timm_one_liner_loads_finetuned_weights(tmp_path):
    vit = create_encoder("mae_vit_micro_patch4", num_classes=10, global_pool="avg")
    torch.save({"model": vit.state_dict()}, tmp_path / "ft.pt")
    plain = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        num_classes=10,
        global_pool="avg",
        **encoder_kwargs("mae_vit_micro_patch4"),
    )
    plain.load_state_dict(torch.load(tmp_path / "ft.pt")["model"])  # strict
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(plain.eval()(x), vit.eval()(x))


@pytest.mark.cuda
def test_cuda_bf16_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    torch.manual_seed(0)
    model = small(norm_pix_loss=True)
    imgs = torch.randn(4, 3, 32, 32)
    mask = model.sampler(4, model.grid_size, 0.75)
    latent_cpu = model.forward_encoder(imgs, 0.0)[0]
    cuda = model.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, pred, m = cuda(imgs.cuda(), 0.75)
        latent_gpu = cuda.forward_encoder(imgs.cuda(), 0.0)[0]
    loss.backward()
    assert torch.isfinite(loss) and m.device.type == "cuda" and pred.shape == (4, 64, 48)
    assert cuda.blocks[0].attn.fused_attn is True
    assert (latent_gpu.float().cpu().sort(1).values - latent_cpu.sort(1).values).abs().mean() < 5e-2
    del mask
