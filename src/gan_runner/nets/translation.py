"""Image-to-image networks of CycleGAN (Zhu et al. 2017, arXiv:1703.10593): Johnson et al.'s
ResNet generator and the PatchGAN critic (Isola et al. 2017), as the official code builds them
(junyanz/pytorch-CycleGAN-and-pix2pix models/networks.py)."""

from __future__ import annotations

from torch import Tensor, nn

NORMS = ("instance", "batch", "none")


def translation_norm(kind: str, channels: int) -> nn.Module:
    """The official code's norms: instance norm without affine parameters, or batch norm."""
    if kind not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got '{kind}'")
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.Identity()


def init_translation_weights(net: nn.Module) -> None:
    """The official code's `init_type=normal`: conv weights N(0, 0.02), norm scales N(1, 0.02)."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)


class ResidualBlock(nn.Module):
    """Two reflection-padded 3x3 convs with a skip (Johnson et al. 2016; He et al. 2016)."""

    def __init__(self, channels: int, norm: str, dropout: float = 0.0) -> None:
        super().__init__()
        bias = norm != "batch"  # batch norm's shift makes the conv bias redundant
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=bias),
            translation_norm(norm, channels),
            nn.ReLU(True),
        ]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=bias),
            translation_norm(norm, channels),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNetGenerator(nn.Module):
    """CycleGAN's generator (Zhu et al. 2017, after Johnson et al. 2016): a 7x7 conv, stride-2
    downsamples, residual blocks at the lowest scale, transposed-conv upsamples, a 7x7 conv, tanh.

    The resolution must be divisible by 2**n_downsample and leave at least 2x2 at the bottom
    (reflection padding needs it): 8 px with the default 2 downsamples works.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        width: int = 64,
        n_blocks: int = 9,
        n_downsample: int = 2,
        norm: str = "instance",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if width < 1 or n_blocks < 0 or n_downsample < 0:
            raise ValueError(
                f"width >= 1, n_blocks >= 0 and n_downsample >= 0 are needed, got width={width}, "
                f"n_blocks={n_blocks}, n_downsample={n_downsample}"
            )
        out_channels = in_channels if out_channels is None else out_channels
        bias = norm != "batch"
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, width, 7, bias=bias),
            translation_norm(norm, width),
            nn.ReLU(True),
        ]
        for i in range(n_downsample):
            fan_in = width * 2**i
            layers += [
                nn.Conv2d(fan_in, 2 * fan_in, 3, stride=2, padding=1, bias=bias),
                translation_norm(norm, 2 * fan_in),
                nn.ReLU(True),
            ]
        bottom = width * 2**n_downsample
        layers += [ResidualBlock(bottom, norm, dropout) for _ in range(n_blocks)]
        for i in range(n_downsample, 0, -1):
            fan_in = width * 2**i
            layers += [
                nn.ConvTranspose2d(fan_in, fan_in // 2, 3, 2, 1, output_padding=1, bias=bias),
                translation_norm(norm, fan_in // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, out_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.in_channels, self.out_channels = in_channels, out_channels
        init_translation_weights(self)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        # `labels` keeps the generator call of sampling and EMA (generator(z, None)); unused.
        return self.net(x)


def patch_layers_for(resolution: int, most: int = 3) -> int:
    """The deepest PatchGAN (up to `most` stride-2 layers) that leaves a map of >= 1x1 on
    `resolution` px: its map side is resolution / 2**n - 2, so n <= log2(resolution / 3)."""
    n = most
    while n > 1 and resolution // 2**n - 2 < 1:
        n -= 1
    return n


class PatchGANCritic(nn.Module):
    """The PatchGAN critic (Isola et al. 2017; CycleGAN's 70x70 one at n_layers=3): 4x4 convs
    of stride 2 (n_layers of them), then two of stride 1, leaky ReLU 0.2, a logit per patch.

    Its map side is R / 2**n_layers - 2 for an R px input: n_layers=3 (70x70 patches) needs
    R >= 24, 2 (34x34) R >= 12, 1 (16x16) R >= 6. n_layers=None picks the deepest of these up
    to 3 that fits `resolution`.
    """

    def __init__(
        self,
        in_channels: int,
        width: int = 64,
        n_layers: int | None = 3,
        norm: str = "instance",
        negative_slope: float = 0.2,
        resolution: int | None = None,
    ) -> None:
        super().__init__()
        if n_layers is None:
            if resolution is None:
                raise ValueError("n_layers=null picks the depth from the resolution: pass it")
            n_layers = patch_layers_for(resolution)
        if n_layers < 1 or width < 1:
            raise ValueError(f"n_layers and width must be >= 1, got {n_layers}, {width}")
        if resolution is not None and resolution // 2**n_layers - 2 < 1:
            raise ValueError(
                f"a PatchGAN with n_layers={n_layers} leaves no patch of a {resolution} px image "
                f"(it needs >= {3 * 2**n_layers} px); set n_layers to "
                f"{patch_layers_for(resolution)} or null"
            )
        self.n_layers = n_layers
        bias = norm != "batch"
        layers: list[nn.Module] = [  # no norm on the first layer, as in the official code
            nn.Conv2d(in_channels, width, 4, 2, 1),
            nn.LeakyReLU(negative_slope, True),
        ]
        fan_out = width
        for n in range(1, n_layers + 1):
            fan_in, fan_out = fan_out, width * min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last of these keeps the scale
            layers += [
                nn.Conv2d(fan_in, fan_out, 4, stride, 1, bias=bias),
                translation_norm(norm, fan_out),
                nn.LeakyReLU(negative_slope, True),
            ]
        layers.append(nn.Conv2d(fan_out, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        init_translation_weights(self)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """A (N, 1, h, w) map of logits, one per overlapping patch."""
        return self.net(x)
