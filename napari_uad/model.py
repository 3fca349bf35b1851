"""Context-encoding VAE (ceVAE) with a Gaussian decoder, for single-channel 2D slices.

Encoder f: x -> (mu_z, log_var_z); decoder g: z -> (mu_x, log_var_x), the pixel-wise Gaussian of Sato et al.
(log_var_x clamped). The context-encoding branch reuses the same encoder/decoder: g(mu_z(x_tilde)) reconstructs
the clean slice from a slice with rectangles painted over it (see ``context_encoding_mask``).
Loss terms follow ``shared/METHODS.md``; all per-slice quantities are sums over pixels / latent units, so the
values of one slice never depend on the other slices in its batch (no batch normalisation anywhere).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

__all__ = ["ArchitectureConfig", "CeVAE", "kl_per_slice", "gaussian_nll", "LOG_2PI"]

LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class ArchitectureConfig:
    """Network shape; stored in the model card.

    input_size: model slice size S (pixels), a multiple of 2**len(channels).
    channels: feature maps of the stride-2 encoder convolutions (mirrored in the decoder).
    latent: dimension of z.
    kernel: convolution kernel size, 4 (thesis) or 3 (MOOD example); stride 2, padding 1.
    coordconv: append normalised (u, v) coordinate channels to the encoder input (CoordConv).
    log_var_clamp: clamp range of the decoder's log-variance.
    """

    input_size: int = 128
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    latent: int = 256
    kernel: int = 4
    coordconv: bool = True
    log_var_clamp: tuple[float, float] = (-9.0, 3.0)

    def __post_init__(self):
        if self.kernel not in (3, 4):
            raise ValueError(f"kernel must be 3 or 4, not {self.kernel}")
        if self.input_size % (2 ** len(self.channels)):
            raise ValueError(f"input_size {self.input_size} is not a multiple of 2**{len(self.channels)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ArchitectureConfig":
        d = dict(d)
        d["channels"] = tuple(int(c) for c in d["channels"])
        d["log_var_clamp"] = tuple(float(c) for c in d["log_var_clamp"])
        return cls(**d)


def _coords(batch: int, size: int, device, dtype) -> torch.Tensor:
    r = torch.linspace(-1.0, 1.0, size, device=device, dtype=dtype)
    gu, gv = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([gu, gv]).unsqueeze(0).expand(batch, -1, -1, -1)


class CeVAE(nn.Module):
    """ceVAE: conv encoder (stride 2, LeakyReLU, CoordConv), linear latent heads, transposed-conv decoder
    with two output channels (mean and log-variance of a per-pixel Gaussian)."""

    def __init__(self, config: ArchitectureConfig = ArchitectureConfig()):
        super().__init__()
        self.config = config
        c, k = config.channels, config.kernel
        out_pad = 1 if k == 3 else 0  # makes the transposed convolution double the size exactly
        in_ch = 1 + (2 if config.coordconv else 0)
        enc = []
        for ch in c:
            enc += [nn.Conv2d(in_ch, ch, k, stride=2, padding=1), nn.LeakyReLU(0.2)]
            in_ch = ch
        self.encoder = nn.Sequential(*enc)
        self.bottom = config.input_size // 2 ** len(c)
        flat = c[-1] * self.bottom**2
        self.to_latent = nn.Linear(flat, 2 * config.latent)
        self.from_latent = nn.Linear(config.latent, flat)
        dec = []
        for ch_in, ch_out in zip(c[::-1], list(c[-2::-1]) + [c[0]]):
            dec += [nn.LeakyReLU(0.2), nn.ConvTranspose2d(ch_in, ch_out, k, stride=2, padding=1, output_padding=out_pad)]
        self.decoder = nn.Sequential(*dec, nn.LeakyReLU(0.2), nn.Conv2d(c[0], 2, 3, padding=1))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 1, S, S] -> (mu_z, log_var_z), each [B, latent]."""
        if self.config.coordconv:
            x = torch.cat([x, _coords(x.shape[0], x.shape[-1], x.device, x.dtype)], dim=1)
        h = self.encoder(x).flatten(1)
        mu, log_var = self.to_latent(h).chunk(2, dim=1)
        return mu, log_var

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z [B, latent] -> (mu_x, log_var_x), each [B, 1, S, S]; log_var_x clamped."""
        h = self.from_latent(z).view(z.shape[0], self.config.channels[-1], self.bottom, self.bottom)
        out = self.decoder(h)
        lo, hi = self.config.log_var_clamp
        return out[:, :1], out[:, 1:].clamp(lo, hi)

    def forward(self, x: torch.Tensor, sample: bool = True):
        """Returns (mu_x, log_var_x, mu_z, log_var_z); z is sampled (reparameterisation) when ``sample``."""
        mu_z, log_var_z = self.encode(x)
        z = mu_z + torch.exp(0.5 * log_var_z) * torch.randn_like(mu_z) if sample else mu_z
        mu_x, log_var_x = self.decode(z)
        return mu_x, log_var_x, mu_z, log_var_z


def kl_per_slice(mu_z: torch.Tensor, log_var_z: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per slice, [B]: 0.5 * sum(mu^2 + exp(log_var) - log_var - 1)."""
    return 0.5 * (mu_z.pow(2) + log_var_z.exp() - log_var_z - 1.0).sum(dim=1)


def gaussian_nll(x: torch.Tensor, mu_x: torch.Tensor, log_var_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel Gaussian NLL split into (U, E): U = 0.5*log(2*pi*sigma^2), E = (x-mu)^2 / (2*sigma^2)."""
    u = 0.5 * (LOG_2PI + log_var_x)
    e = (x - mu_x).pow(2) * torch.exp(-log_var_x) * 0.5
    return u, e

