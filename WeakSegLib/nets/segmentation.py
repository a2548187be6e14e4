"""Segmentation networks: residual UNet (MONAI, 2D or 3D) and ENet (2D).

2.5D input is a 2D network whose ``in_channels`` are k neighbouring slices. Every network maps
``(B, in_channels, *S)`` to logits ``(B, out_channels, *S)`` for spatial sizes divisible by
:data:`SIZE_MULTIPLE`.
"""

from __future__ import annotations

import torch
from torch import nn

from WeakSegLib.config import DEFAULT_CHANNELS, NETWORKS

#: spatial sizes fed to any network are padded to a multiple of this
SIZE_MULTIPLE = 16


def build_network(name: str, spatial_dims: int, in_channels: int, out_channels: int,
                  channels: tuple[int, ...] = DEFAULT_CHANNELS) -> nn.Module:
    """Build a network by name.

    Args:
        name: ``"unet"`` (MONAI residual UNet, 2 residual units per level) or ``"enet"`` (2D only).
        spatial_dims: 2 or 3.
        in_channels: input channels (k for 2.5D input with k slices).
        out_channels: classes including background.
        channels: UNet feature channels per level (4 down-samplings by 2).
    """
    if name == "unet":
        from monai.networks.nets import UNet

        return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                    channels=tuple(channels), strides=(2,) * (len(channels) - 1), num_res_units=2,
                    norm="batch")
    if name == "enet":
        if spatial_dims != 2:
            raise ValueError("ENet is 2D only; use 'unet' for 3D")
        return ENet(in_channels, out_channels)
    raise ValueError(f"unknown network {name!r}; choose one of {', '.join(NETWORKS)}")


class _Initial(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout - cin, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(torch.cat([self.conv(x), self.pool(x)], 1)))


class _Bottleneck(nn.Module):
    """ENet bottleneck: 1×1 reduce, main conv (regular, dilated or asymmetric 1×k/k×1), 1×1 expand,
    spatial dropout; residual branch with max-pooling (downsampling) and zero channel padding."""

    def __init__(self, cin: int, cout: int, kind: str = "regular", dilation: int = 1,
                 down: bool = False, drop: float = 0.1) -> None:
        super().__init__()
        mid = cout // 4
        self.down = down
        self.pad_channels = cout - cin
        reduce = nn.Conv2d(cin, mid, 2 if down else 1, stride=2 if down else 1, bias=False)
        if kind == "asymmetric":
            main = nn.Sequential(nn.Conv2d(mid, mid, (5, 1), padding=(2, 0), bias=False),
                                 nn.Conv2d(mid, mid, (1, 5), padding=(0, 2), bias=False))
        else:
            main = nn.Conv2d(mid, mid, 3, padding=dilation, dilation=dilation, bias=False)
        self.branch = nn.Sequential(reduce, nn.BatchNorm2d(mid), nn.PReLU(mid), main, nn.BatchNorm2d(mid),
                                    nn.PReLU(mid), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
                                    nn.Dropout2d(drop))
        self.pool = nn.MaxPool2d(2, return_indices=True) if down else None
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor):
        indices = None
        main = x
        if self.pool is not None:
            main, indices = self.pool(x)
        if self.pad_channels:
            main = nn.functional.pad(main, (0, 0, 0, 0, 0, self.pad_channels))
        out = self.act(main + self.branch(x))
        return (out, indices) if self.down else out


class _Upsample(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin // 4
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.unpool = nn.MaxUnpool2d(2)
        self.branch = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.PReLU(mid),
                                    nn.ConvTranspose2d(mid, mid, 2, stride=2, bias=False), nn.BatchNorm2d(mid),
                                    nn.PReLU(mid), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor, indices: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return self.act(self.unpool(self.skip(x), indices, output_size=size) + self.branch(x))


class ENet(nn.Module):
    """ENet (Paszke et al., 2016) for ``(B, in_channels, H, W)`` with H, W divisible by 8."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.initial = _Initial(in_channels, 16 if in_channels < 16 else in_channels + 13)
        c0 = self.initial.bn.num_features
        self.down1 = _Bottleneck(c0, 64, down=True, drop=0.01)
        self.stage1 = nn.Sequential(*[_Bottleneck(64, 64, drop=0.01) for _ in range(4)])
        self.down2 = _Bottleneck(64, 128, down=True)

        def middle() -> nn.Sequential:
            return nn.Sequential(_Bottleneck(128, 128), _Bottleneck(128, 128, dilation=2),
                                 _Bottleneck(128, 128, "asymmetric"), _Bottleneck(128, 128, dilation=4),
                                 _Bottleneck(128, 128), _Bottleneck(128, 128, dilation=8),
                                 _Bottleneck(128, 128, "asymmetric"), _Bottleneck(128, 128, dilation=16))

        self.stage2, self.stage3 = middle(), middle()
        self.up4 = _Upsample(128, 64)
        self.stage4 = nn.Sequential(_Bottleneck(64, 64), _Bottleneck(64, 64))
        self.up5 = _Upsample(64, 16)
        self.stage5 = _Bottleneck(16, 16)
        self.full = nn.ConvTranspose2d(16, out_channels, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.initial(x)
        size1 = x.shape
        x, idx1 = self.down1(x)
        x = self.stage1(x)
        size2 = x.shape
        x, idx2 = self.down2(x)
        x = self.stage3(self.stage2(x))
        x = self.stage4(self.up4(x, idx2, size2))
        x = self.stage5(self.up5(x, idx1, size1))
        return self.full(x)
