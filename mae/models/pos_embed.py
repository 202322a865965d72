"""Fixed 2-D sine-cosine position embeddings and their resampling to other grid sizes.

Layout (docs/ARCHITECTURE.md, "Reference facts"): half of the channels encode the column coordinate, half
the row coordinate; each half is
``[sin(pos * omega), cos(pos * omega)]`` with ``omega_i = 1 / 10000 ** (i / (D/4))``; rows of the table follow
the row-major patch order; an optional all-zero first row serves the cls token. Computed in float64 and
returned as float32 so values match the reference tables bit for bit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim) table of [sin | cos] with geometric frequencies."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.to(torch.float64).reshape(-1)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = False) -> torch.Tensor:
    """(gh*gw [+1], embed_dim) float32 table; first half of channels = column index, second = row index."""
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs embed_dim divisible by 4, got {embed_dim}")
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    table = torch.cat([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, embed_dim, dtype=table.dtype), table], dim=0)
    return table.to(torch.float32)


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Bicubically resample the patch rows of a (1, prefix + gh*gw, D) table to ``new_grid``; prefix rows kept."""
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = int(round(math.sqrt(patches.shape[1])))
    if old * old != patches.shape[1]:
        raise ValueError(f"pos_embed has {patches.shape[1]} patch rows, not a square grid")
    if (old, old) == tuple(new_grid):
        return pos_embed
    dim = patches.shape[-1]
    grid = patches.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    patches = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, patches], dim=1)
