"""Masked-autoencoder pretraining of the Sapiens backbone (He et al., "Masked Autoencoders Are Scalable Vision
Learners", CVPR 2022), as configured by Sapiens' ``mae_sapiens_*_humans_300m`` recipe:

    imgs (B, 3, H, W) -> patch conv + fixed sin-cos pos -> keep 25% of the patches at random -> + cls
        -> encoder blocks (visible tokens only) -> LayerNorm                                 (B, 1 + K, C)
        -> Linear C->512 -> scatter back with mask tokens -> + fixed sin-cos pos
        -> 8 x Block(512, 16 heads) -> LayerNorm -> Linear 512 -> 16*16*3                  (B, N, 768)
    loss = mean over masked patches of the per-patch MSE against the per-patch normalized pixels.

The encoder is our ``SapiensViT`` (with cls token), so its weights go straight into a "features" ``SapiensModel``;
``official_state_dict`` gives the raw mmpretrain layout (``backbone.*`` + ``neck.*``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..io.writers import atomic_path
from .sapiens import ModelConfig, SapiensModel
from .vit import Block, SapiensViT, ViTArch, get_arch


def sincos_pos_embed(grid: tuple[int, int], dim: int, cls_token: bool = True,
                     temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos table (1, cls + h*w, dim) in float32; the cls row is zero.

    Each token k of the row-major grid gets concat[sin(r w), cos(r w), sin(c w), cos(c w)] with r = k // w_grid,
    c = k % w_grid and w_d = temperature^(-d / (dim/4)). The official table builds ``meshgrid(grid_w, grid_h)``, which
    on its square grids puts the ROW index in the first half; we keep that order for every grid.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    h, w = grid
    rows = torch.arange(h, dtype=torch.float64).repeat_interleave(w)  # (h*w,)
    cols = torch.arange(w, dtype=torch.float64).repeat(h)
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    r, c = rows[:, None] * omega, cols[:, None] * omega  # (h*w, dim/4)
    table = torch.cat([r.sin(), r.cos(), c.sin(), c.cos()], dim=1).float()
    if cls_token:
        table = torch.cat([table.new_zeros(1, dim), table], dim=0)
    return table[None]


def patchify(imgs: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, h*p, w*p) -> (B, h*w, p*p*C), each patch ordered (row in patch, column in patch, channel)."""
    B, C, H, W = imgs.shape
    if H % patch or W % patch:
        raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {patch}")
    h, w = H // patch, W // patch
    x = imgs.reshape(B, C, h, patch, w, patch).permute(0, 2, 4, 3, 5, 1)  # B h w p q C
    return x.reshape(B, h * w, patch * patch * C)


def unpatchify(x: torch.Tensor, patch: int, grid: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """Inverse of ``patchify``: (B, h*w, p*p*C) -> (B, C, h*p, w*p)."""
    B = x.shape[0]
    h, w = grid
    x = x.reshape(B, h, w, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)  # B C h p w q
    return x.reshape(B, channels, h * patch, w * patch)


def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep ``int(N * (1 - mask_ratio))`` tokens per sample, chosen uniformly at random.

    Args:
        x: (B, N, C) tokens.
        noise: optional (B, N) scores; the tokens with the smallest scores are kept (for reproducible tests).

    Returns:
        kept (B, K, C) in the order of increasing noise, mask (B, N) with 1 = removed (x.dtype), and ids_restore
        (B, N): position of each original token in [kept, removed], so ``gather(cat(kept, removed), ids_restore)``
        puts every token back in its place.
    """
    B, N, C = x.shape
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    keep = int(N * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(B, N, device=x.device, generator=generator)
    ids_shuffle = noise.argsort(dim=1)  # (B, N): ascending noise, kept first
    ids_restore = torch.empty_like(ids_shuffle)
    ids_restore.scatter_(1, ids_shuffle, torch.arange(N, device=x.device).expand(B, N))  # inverse permutation
    kept = x.gather(1, ids_shuffle[:, :keep, None].expand(B, keep, C))
    mask = (ids_restore >= keep).to(x.dtype)  # (B, N)
    return kept, mask, ids_restore


def patch_targets(imgs: torch.Tensor, patch: int, norm_pix: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Reconstruction targets (B, N, p*p*3) in float32: per-patch (x - mean) / sqrt(unbiased var + eps) if norm_pix."""
    target = patchify(imgs.float(), patch)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)  # unbiased, as the official head
        target = (target - mean) / (var + eps).sqrt()
    return target


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-patch MSE, averaged over the masked patches only (float32)."""
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)  # (B, N)
    mask = mask.float()
    return (per_patch * mask).sum() / mask.sum()


MAE_CONFIG_KEY = "opensapiens_mae_config"  # the metadata entry of a saved MAE (mae.safetensors, a pretrain checkpoint)


@dataclass(frozen=True)
class MAEConfig:
    """Everything needed to rebuild an ``MAE``; the defaults are the official Sapiens recipe."""

    arch: ViTArch
    input_size: tuple[int, int] = (1024, 1024)
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MAEConfig:
        d = dict(d)
        d["arch"] = ViTArch(**d["arch"]) if isinstance(d["arch"], dict) else get_arch(d["arch"])
        d["input_size"] = tuple(d["input_size"])
        return cls(**d)

    @property
    def grid(self) -> tuple[int, int]:
        p = self.arch.patch_size
        H, W = self.input_size
        if H % p or W % p:
            raise ValueError(f"MAE input size {H}x{W} must be a multiple of the patch size {p}")
        return H // p, W // p

    def metadata(self) -> dict[str, str]:
        """The metadata entry that makes a file load as this MAE (mae.safetensors; pretraining checkpoints)."""
        return {MAE_CONFIG_KEY: json.dumps(self.to_dict())}

    def features_config(self) -> ModelConfig:
        """The encoder as a "features" model (cls token and the (1, 1 + N, C) sin-cos table of this input size)."""
        return ModelConfig(task="features", arch=self.arch, patch_padding=0, pos_grid=self.grid, with_cls_token=True,
                           extra={"pretrain": "mae"})


class MAEDecoder(nn.Module):
    """The official ``MAEPretrainDecoder`` ("neck"): (B, 1 + K, C) latent + ids_restore -> (B, N, p*p*3)."""

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, grid: tuple[int, int], patch: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.grid = tuple(grid)
        self.decoder_embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, patch * patch * 3)
        # Fixed: a frozen parameter, as in the official checkpoints (``neck.decoder_pos_embed``). Not a buffer, so
        # DDP does not broadcast it every step.
        self.pos_embed = nn.Parameter(sincos_pos_embed(self.grid, dim), requires_grad=False)
        self.grad_checkpointing = False

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)  # (B, 1 + K, D)
        B, K1, D = x.shape
        N = ids_restore.shape[1]
        tokens = torch.cat([x[:, 1:], self.mask_token.to(x.dtype).expand(B, N + 1 - K1, D)], dim=1)  # (B, N, D)
        tokens = tokens.gather(1, ids_restore[:, :, None].expand(B, N, D))  # back in grid order
        x = torch.cat([x[:, :1], tokens], dim=1) + self.pos_embed.to(x.dtype)  # (B, 1 + N, D)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return self.pred(self.norm(x[:, 1:]))  # (B, N, p*p*3); the cls token is dropped before the projection


class MAE(nn.Module):
    """Sapiens MAE. ``forward(imgs, mask_ratio)`` -> (loss, pred (B, N, p*p*3), mask (B, N), 1 = masked).

    ``imgs`` is the normalized (B, 3, H, W) batch at ``config.input_size``. ``pred`` is in the units of the target
    (per-patch normalized pixels when ``norm_pix``); ``reconstruct`` turns it back into images.
    """

    def __init__(self, config: MAEConfig):
        super().__init__()
        self.config = config
        arch = config.arch
        grid = config.grid
        self.backbone = SapiensViT(arch, pos_grid=grid, patch_padding=0, with_cls_token=True)
        self.backbone.pos_embed.requires_grad_(False)  # fixed sin-cos during pretraining, as MAEViT
        self.decoder = MAEDecoder(arch.embed_dim, config.decoder_dim, config.decoder_depth, config.decoder_heads,
                                  grid, arch.patch_size, arch.mlp_ratio)
        self.reset_parameters()

    @property
    def patch_size(self) -> int:
        return self.config.arch.patch_size

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official init: Xavier-uniform Linears (FFN biases ~ N(0, 1e-6), others 0), unit LayerNorms,
        Xavier patch conv (as a (C, 768) matrix), N(0, 0.02) cls and mask tokens, sin-cos position tables."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if ".mlp." in f".{name}.":
                    nn.init.normal_(m.bias, std=1e-6)
                else:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.backbone.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.backbone.patch_embed.proj.bias)
        nn.init.normal_(self.backbone.cls_token, std=0.02)
        nn.init.normal_(self.decoder.mask_token, std=0.02)
        self.backbone.pos_embed.copy_(sincos_pos_embed(self.config.grid, self.config.arch.embed_dim))
        self.decoder.pos_embed.copy_(sincos_pos_embed(self.config.grid, self.config.decoder_dim))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)
        self.decoder.grad_checkpointing = enable

    def transformer_blocks(self) -> list[nn.Module]:
        """Encoder then decoder blocks: the units for FSDP wrapping, activation checkpointing and compilation."""
        return [*self.backbone.blocks, *self.decoder.blocks]

    def encode(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> latent (B, 1 + K, C) of the visible tokens, mask (B, N), ids_restore (B, N)."""
        enc = self.backbone
        if tuple(imgs.shape[-2:]) != self.config.input_size:
            raise ValueError(f"MAE expects {self.config.input_size[0]}x{self.config.input_size[1]} inputs, got "
                             f"{imgs.shape[-2]}x{imgs.shape[-1]}")
        x, _ = enc.patch_embed(imgs)  # (B, N, C)
        pos = enc.pos_embed.to(x.dtype)
        x, mask, ids_restore = random_masking(x + pos[:, 1:], mask_ratio, noise)  # pos added before masking
        cls = (enc.cls_token + enc.pos_embed[:, :1]).to(x.dtype).expand(x.shape[0], -1, -1)
        return enc.run_blocks(torch.cat([cls, x], dim=1)), mask, ids_restore  # only visible tokens run

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latent, mask, ids_restore = self.encode(imgs, mask_ratio, noise)
        pred = self.decoder(latent, ids_restore)  # (B, N, p*p*3)
        target = patch_targets(imgs, self.patch_size, self.config.norm_pix)
        return masked_mse(pred, target, mask), pred, mask

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(masked input, prediction, prediction pasted into the visible patches), each (B, 3, H, W) in the input's
        normalized units. A norm_pix prediction is mapped back with each patch's own mean and std, as the official
        visualisation does."""
        p = self.patch_size
        target = patchify(imgs.float(), p)
        pred = pred.float()
        if self.config.norm_pix:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            pred = pred * (var + 1e-6).sqrt() + mean
        m = mask.float()[..., None]  # (B, N, 1)
        grid = self.config.grid
        masked = unpatchify(target * (1 - m), p, grid)
        return masked, unpatchify(pred, p, grid), unpatchify(target * (1 - m) + pred * m, p, grid)

    # ----- checkpoints -------------------------------------------------------------------------------------------

    @classmethod
    def from_state_dict(cls, config: MAEConfig, sd: dict[str, torch.Tensor]) -> MAE:
        """An MAE holding ``sd`` (our key layout) without running the random init (built on the meta device)."""
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(sd, strict=True, assign=True)
        return model

    def save(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
        """Encoder + decoder as safetensors (our key layout, config in the metadata), for ``--init`` of a later
        pretraining run; written atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(sd, str(tmp), metadata={**self.config.metadata(),
                                              **(metadata or {})})
        return path

    def backbone_model(self) -> SapiensModel:
        """A "features" ``SapiensModel`` holding a copy of the encoder (cls token and (1, 1 + N, C) sin-cos table),
        ready for ``save_model`` / ``export_official`` and fine-tuning with ``--init``."""
        model = SapiensModel(self.config.features_config())
        sd = {k: v.detach().float().cpu() for k, v in self.backbone.state_dict().items()}
        model.backbone.load_state_dict(sd, strict=True)
        return model

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The raw official layout: ``backbone.*`` (as in ``sapiens_*_epoch_N.pth``) and ``neck.*`` decoder keys."""
        from ..checkpoints import ours_to_official

        sd = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        out = {"backbone." + k: v for k, v in ours_to_official(
            {k: v for k, v in sd.items() if k.startswith("backbone.")}, "features").items()}
        dec = ours_to_official({"backbone." + k[len("decoder."):]: v for k, v in sd.items()
                                if k.startswith("decoder.blocks.")}, "features")
        out.update({"neck.decoder_blocks." + k[len("layers."):]: v for k, v in dec.items()})
        out["neck.ln1.weight"], out["neck.ln1.bias"] = sd["decoder.norm.weight"], sd["decoder.norm.bias"]
        for ours, theirs in (("decoder_embed", "decoder_embed"), ("pred", "decoder_pred")):
            out[f"neck.{theirs}.weight"], out[f"neck.{theirs}.bias"] = sd[f"decoder.{ours}.weight"], \
                sd[f"decoder.{ours}.bias"]
        out["neck.mask_token"] = sd["decoder.mask_token"]
        out["neck.decoder_pos_embed"] = sd["decoder.pos_embed"]
        return out

    def load_pretrained(self, sd: dict[str, torch.Tensor]) -> list[str]:
        """Initialise from a pretrain checkpoint in the official raw or clean layout, or our own: the encoder always,
        the decoder when ``neck.*`` keys are present (all of it). Position tables stay the fixed sin-cos of this
        model's grid.
        Returns the names of the tensors that were loaded."""
        from ..checkpoints.official import is_official_layout, official_to_ours

        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        loaded: dict[str, torch.Tensor] = {}
        if is_official_layout(sd):
            neck = {k[len("neck."):]: v for k, v in sd.items() if k.startswith("neck.")}
            loaded.update(official_to_ours(sd))
            if neck:
                blocks = official_to_ours({"backbone.layers." + k[len("decoder_blocks."):]: v for k, v in neck.items()
                                           if k.startswith("decoder_blocks.")})
                loaded.update({"decoder." + k[len("backbone."):]: v for k, v in blocks.items()})
                renames = {"ln1.": "norm.", "decoder_embed.": "decoder_embed.", "decoder_pred.": "pred."}
                for k, v in neck.items():
                    for a, b in renames.items():
                        if k.startswith(a):
                            loaded["decoder." + b + k[len(a):]] = v
                if "mask_token" in neck:
                    loaded["decoder.mask_token"] = neck["mask_token"]
        else:
            loaded = {k: v for k, v in sd.items() if k.startswith(("backbone.", "decoder."))}
        loaded = {k: v for k, v in loaded.items() if not k.endswith("pos_embed")}
        own = self.state_dict()
        bad = [k for k, v in loaded.items() if k not in own or own[k].shape != v.shape]
        if bad:
            raise ValueError(f"pretrained weights do not fit MAE({self.config.arch.name}): {bad[:5]}")
        missing = [k for k in own if k.startswith("backbone.") and not k.endswith("pos_embed") and k not in loaded]
        if missing:
            raise ValueError(f"pretrained weights lack encoder tensors: {missing[:5]}")
        if any(k.startswith("decoder.") for k in loaded):  # a decoder loads whole or not at all, never half random
            missing = [k for k in own if k.startswith("decoder.") and not k.endswith("pos_embed") and k not in loaded]
            if missing:
                raise ValueError(f"pretrained weights hold a decoder that lacks {len(missing)} of this MAE's decoder "
                                 f"tensors ({missing[:3]}): its depth or width differs from this decoder's")
        self.load_state_dict(loaded, strict=False)
        return sorted(loaded)


def build_mae(arch: str | ViTArch = "tiny", input_size: tuple[int, int] = (1024, 1024), **kw) -> MAE:
    return MAE(MAEConfig(arch=get_arch(arch), input_size=tuple(input_size), **kw))


def mae_flops_per_image(config: MAEConfig, mask_ratio: float = 0.75) -> float:
    """Analytic forward FLOPs (2 x MAC) of one image: matmuls of encoder (visible tokens), decoder and attention."""
    a, p = config.arch, config.arch.patch_size
    N = config.grid[0] * config.grid[1]
    K = int(N * (1 - mask_ratio)) + 1
    C, D = a.embed_dim, config.decoder_dim
    hid, dhid = int(C * a.mlp_ratio), int(D * a.mlp_ratio)
    enc = a.depth * (K * (4 * C * C + 2 * C * hid) + 2 * K * K * C)
    dec = config.decoder_depth * ((N + 1) * (4 * D * D + 2 * D * dhid) + 2 * (N + 1) ** 2 * D)
    rest = N * 3 * p * p * C + K * C * D + (N + 1) * D * 3 * p * p
    return 2.0 * (enc + dec + rest)


__all__ = ["MAE", "MAEConfig", "MAEDecoder", "build_mae", "mae_flops_per_image", "masked_mse", "patch_targets",
           "patchify", "random_masking", "sincos_pos_embed", "unpatchify"]
