"""Small networks the tests build their expectations on (independent of the code under test)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PlainNet(nn.Module):
    """conv-bn-relu, conv-bn-relu, maxpool, flatten, linear, relu, linear (on 3x8x8 inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(12)
        self.fc1 = nn.Linear(12 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


class ResidualNet(nn.Module):
    """A stem, one basic residual block with an identity shortcut, a 1x1 head, pooling, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.bna = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.bnb = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.bn0(self.stem(x)))
        out = self.bnb(self.b(F.relu(self.bna(self.a(s)))))
        out = F.relu(out + s)
        out = F.adaptive_avg_pool2d(F.relu(self.head(out)), 1)
        return self.fc(torch.flatten(out, 1))


class SeparableNet(nn.Module):
    """conv, depthwise 3x3 (stride 2), pointwise 1x1, grouped 3x3 (2 groups), pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.dwbn = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 12, 1)
        self.grouped = nn.Conv2d(12, 6, 3, padding=1, groups=2)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = F.relu(self.dwbn(self.dw(x)))
        x = F.relu(self.grouped(F.relu(self.pw(x))))
        return self.fc(x.mean((2, 3)))


class ConcatNet(nn.Module):
    """Two parallel convs concatenated on channels, then a 1x1 conv and a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Conv2d(3, 4, 3, padding=1)
        self.right = nn.Conv2d(3, 6, 1)
        self.mix = nn.Conv2d(10, 5, 1)
        self.fc = nn.Linear(5 * 2 * 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([F.relu(self.left(x)), F.relu(self.right(x))], dim=1)
        x = F.avg_pool2d(F.relu(self.mix(x)), 2)
        return self.fc(x.view(x.size(0), -1))


class LeNet5(nn.Module):
    """A LeNet-5 with a published cost: 1->32 5x5, 32->64 5x5, 1024->512->10 on 28x28 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5)
        self.conv2 = nn.Conv2d(32, 64, 5)
        self.fc1 = nn.Linear(1024, 512)
        self.fc2 = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class _CifarBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        short = x
        if self.stride != 1 or self.pad:
            # Option A shortcut: subsample and zero-pad channels (no parameters).
            short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad // 2, self.pad // 2))
        return F.relu(out + short)


class ResNet20(nn.Module):
    """He et al.'s CIFAR ResNet-20 (option A shortcuts)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks = []
        cin = 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                blocks.append(_CifarBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class UpsampleNet(nn.Module):
    """conv, a ConvTranspose2d the graph does not compress (2/3 of the MACs), conv, pool, linear.

    On 3x8x8 inputs: conv1 3->8 3x3 at 8x8, up 8->8 4x4 stride 2 from 8x8 to 16x16, conv2 8->4
    3x3 stride 2 back to 8x8, global average pool, fc 4->3.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.up(F.relu(self.bn1(self.conv1(x)))))
        x = F.relu(self.conv2(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (eval-mode tests)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


class SqueezeExciteNet(nn.Module):
    """A conv, a squeeze-and-excitation gate on its output (``x * s``), then a conv and a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(4, 2, 1), nn.Conv2d(2, 4, 1)
        self.b = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.a(x))
        s = F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        x = F.relu(self.b(x * s))
        return self.fc(x.flatten(1))


class OptionANet(nn.Module):
    """ResNet's option-A shortcut: subsample, zero-pad 4 channels to 8, add to a strided conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.c = nn.Conv2d(8, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.a(x))
        short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2))
        x = F.relu(self.b(x) + short)
        return self.fc(F.relu(self.c(x)).flatten(1))


class PadThenBatchNorm(nn.Module):
    """Zero-padded channels read by a BatchNorm, which makes them a non-zero constant."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c = nn.Conv2d(8, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(F.relu(self.a(x)), (0, 0, 0, 0, 2, 2))
        return self.fc(F.relu(self.c(F.relu(self.bn(x)))).flatten(1))
