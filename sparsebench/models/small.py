"""Small models of the sparse-training literature, registered with timm.

They register through ``timm.models.register_model`` so that ``timm.create_model("mlp", ...)``
and ``timm.create_model("resnet20", ...)`` find them exactly like timm's own networks, and the
model yamls stay uniform (``_target_: timm.create_model``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models import register_model
from torch import nn


class MLP(nn.Module):
    """A fully connected classifier over flattened inputs (MNIST-1D, digits).

    Linear -> BatchNorm -> ReLU per hidden layer; the last Linear is the classifier head.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_dims: Sequence[int] = (256, 256),
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            if drop_rate > 0:
                layers.append(nn.Dropout(drop_rate))
            width = hidden
        self.features = nn.Sequential(*layers)
        self.num_features = width
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            # Projection shortcut ("option B" of He et al. 2016): a prunable 1x1 conv.
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.downsample(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs (He et al., "Deep Residual Learning", CVPR 2016, Sec. 4.2).

    Three stages of n basic blocks with widths w, 2w, 4w, a 3x3 stem without pooling and a
    linear head; n=3, w=16 is ResNet-20 (0.27M parameters).
    """

    def __init__(
        self, depth: int = 20, num_classes: int = 10, in_chans: int = 3, width: int = 16
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}.")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act = nn.ReLU(inplace=True)
        stages: list[nn.Module] = []
        in_planes = width
        for i in range(3):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = in_planes
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _drop_timm_kwargs(kwargs: dict) -> dict:
    # timm.create_model adds these for every model; ours have no pretrained weights.
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return kwargs


def _no_pretrained(name: str, pretrained: bool) -> None:
    if pretrained:
        raise ValueError(f"model '{name}' has no pretrained weights; set model.pretrained=false.")


@register_model
def mlp(
    pretrained: bool = False,
    num_classes: int = 10,
    in_chans: int = 1,
    in_features: int | None = None,
    hidden_dims: Sequence[int] = (256, 256),
    drop_rate: float = 0.0,
    **kwargs,
) -> MLP:
    """MLP over flattened inputs; ``in_features`` is C*H*W (or C*L) of the dataset."""
    _no_pretrained("mlp", pretrained)
    _drop_timm_kwargs(kwargs)
    if kwargs:
        raise TypeError(f"mlp got unexpected arguments: {sorted(kwargs)}")
    if in_features is None:
        raise ValueError("model 'mlp' needs in_features (the flattened input size).")
    return MLP(in_features, num_classes, tuple(hidden_dims), drop_rate)


@register_model
def resnet20(
    pretrained: bool = False, num_classes: int = 10, in_chans: int = 3, width: int = 16, **kwargs
) -> CifarResNet:
    """CIFAR-style ResNet-20 (He et al. 2016), the standard network of sparse-training papers."""
    _no_pretrained("resnet20", pretrained)
    _drop_timm_kwargs(kwargs)
    if kwargs:
        raise TypeError(f"resnet20 got unexpected arguments: {sorted(kwargs)}")
    return CifarResNet(20, num_classes, in_chans, width)


@register_model
def dass_network(
    pretrained: bool = False,
    num_classes: int = 10,
    in_chans: int = 1,
    channels: int = 8,
    cells: int = 3,
    nodes: int = 3,
    genotype=None,
    **kwargs,
) -> nn.Module:
    """A network of DASS's search space built from a genotype (default: a hand-made one);
    ``+method=dass`` searches the genotype instead (sparsebench.transforms.dass)."""
    from sparsebench.models.dass import DerivedNetwork, check_genotype, default_genotype

    _no_pretrained("dass_network", pretrained)
    _drop_timm_kwargs(kwargs)
    if kwargs:
        raise TypeError(f"dass_network got unexpected arguments: {sorted(kwargs)}")
    genotype = check_genotype(genotype, nodes) if genotype is not None else default_genotype(nodes)
    return DerivedNetwork(in_chans, num_classes, genotype, channels, cells, nodes)
