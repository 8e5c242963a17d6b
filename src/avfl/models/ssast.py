"""SSAST (Gong et al., 2022): an AST-style ViT over the 128-bin fbank, loadable from the
official self-supervised checkpoints.

Written for this project from the paper and the published checkpoint layout: the official
files are `torch.nn.DataParallel` state dicts with keys `module.v.*` (a DeiT-distilled ViT:
`cls_token`, `dist_token`, `pos_embed`, `patch_embed.proj`, `blocks.{i}.{norm1,attn.qkv,
attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`), the pretraining input size in
`module.p_input_fdim` / `module.p_input_tdim`, and pretext-task layers (`cpredlayer`,
`gpredlayer`, `mask_embed`) that fine-tuning drops. Patch models use 16x16 patches, frame
models 128x2. For a different input length the positional embedding is cut around its
centre (shorter) or bilinearly interpolated (longer), as SSAST's fine-tuning does.
The clip embedding is the mean of the patch tokens (SSAST's `ft_avgtok`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

SIZES = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}  # embed dim, heads; depth 12


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, shape: tuple[int, int], stride: tuple[int, int]):
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=shape, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    """The `v` module of SSAST: names match the checkpoint keys after `module.v.`."""

    def __init__(self, dim: int, heads: int, depth: int, shape, stride, n_patches: int):
        super().__init__()
        self.patch_embed = PatchEmbed(dim, shape, stride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 2, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)


def patch_grid(input_fdim: int, input_tdim: int, shape, stride) -> tuple[int, int]:
    return (input_fdim - shape[0]) // stride[0] + 1, (input_tdim - shape[1]) // stride[1] + 1


class SSAST(nn.Module):
    """Audio backbone: (B, T, F) normalised fbank -> (B, dim) clip embedding."""

    def __init__(
        self,
        size: str = "base",
        patch: str = "patch",
        input_fdim: int = 128,
        input_tdim: int = 512,
        stride: tuple[int, int] | None = None,
        depth: int = 12,
    ):
        super().__init__()
        dim, heads = SIZES[size]
        self.shape = (16, 16) if patch == "patch" else (128, 2)
        self.stride = tuple(stride) if stride else self.shape
        self.input_fdim, self.input_tdim = input_fdim, input_tdim
        self.grid = patch_grid(input_fdim, input_tdim, self.shape, self.stride)
        self.v = ViT(dim, heads, depth, self.shape, self.stride, self.grid[0] * self.grid[1])
        nn.init.trunc_normal_(self.v.pos_embed, std=0.02)
        self.out_dim = dim

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        x = fbank.unsqueeze(1).transpose(2, 3)  # (B, 1, F, T)
        x = self.v.patch_embed(x)
        b = x.shape[0]
        x = torch.cat(
            [self.v.cls_token.expand(b, -1, -1), self.v.dist_token.expand(b, -1, -1), x], dim=1
        )
        x = x + self.v.pos_embed
        for block in self.v.blocks:
            x = block(x)
        return self.v.norm(x)[:, 2:].mean(dim=1)

    def load_official(self, state: dict[str, Any]) -> None:
        """Load an official SSAST checkpoint (DataParallel keys); strict on the ViT's weights."""
        state = {k.removeprefix("module."): v for k, v in state.items()}
        if "v.patch_embed.proj.weight" not in state or "p_input_tdim" not in state:
            raise ValueError(
                "not an SSAST checkpoint: v.patch_embed.proj.weight / p_input_tdim missing"
            )
        proj = state["v.patch_embed.proj.weight"]
        if tuple(proj.shape[2:]) != self.shape:
            raise ValueError(
                f"checkpoint has {tuple(proj.shape[2:])} patches, the model {self.shape}: set patch accordingly"
            )
        p_grid = patch_grid(
            int(state["p_input_fdim"]), int(state["p_input_tdim"]), self.shape, self.shape
        )
        vit = {
            k[2:]: v
            for k, v in state.items()
            if k.startswith("v.") and not k.startswith(("v.head", "v.head_dist"))
        }
        vit["pos_embed"] = self._adapt_pos_embed(vit["pos_embed"], p_grid)
        missing, unexpected = self.v.load_state_dict(vit, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"SSAST checkpoint does not match the model: missing {missing}, unexpected {unexpected}"
            )

    def _adapt_pos_embed(self, pos: torch.Tensor, p_grid: tuple[int, int]) -> torch.Tensor:
        dim = pos.shape[-1]
        tokens, patches = pos[:, :2], pos[:, 2:]
        grid = patches.transpose(1, 2).reshape(1, dim, *p_grid)
        f_dim, t_dim = self.grid
        if t_dim <= p_grid[1]:
            start = p_grid[1] // 2 - t_dim // 2
            grid = grid[:, :, :, start : start + t_dim]
        else:
            grid = nn.functional.interpolate(grid, size=(p_grid[0], t_dim), mode="bilinear")
        if f_dim <= p_grid[0]:
            start = p_grid[0] // 2 - f_dim // 2
            grid = grid[:, :, start : start + f_dim, :]
        else:
            grid = nn.functional.interpolate(grid, size=(f_dim, t_dim), mode="bilinear")
        return torch.cat([tokens, grid.reshape(1, dim, f_dim * t_dim).transpose(1, 2)], dim=1)
