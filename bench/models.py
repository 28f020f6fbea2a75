"""The reference architectures of the overhead bench (issue 5), in plain torch (no torchvision).

Every entry of :data:`BENCH_MODELS` builds a model in eval mode with random weights (latency does
not depend on the values) and makes an input of a given batch size:

* ``resnet18_224`` / ``resnet18_32``: ResNet-18 (BasicBlocks [2, 2, 2, 2], widths 64-512,
  BatchNorm) with the ImageNet stem at 224 px and the CIFAR stem (3×3 conv, no max-pool) at 32 px;
* ``mobilenet``: a MobileNet-v1-style CNN (depthwise 3×3 + pointwise 1×1, BN, ReLU6) at 224 px;
* ``mlp``: 784-512-512-10 with ReLU;
* ``transformer``: a 4-layer ``nn.TransformerEncoder`` (d=256, 4 heads, feed-forward 1024,
  batch_first) on sequences of 32 embeddings, mean-pooled into a linear head;
* ``lstm`` / ``gru``: 2-layer LSTM / GRU (hidden 256) on sequences of 32 × 64 features, the last
  step into a linear head.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

SEQ_LEN = 32


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18; ``small_input`` uses the CIFAR stem (3×3 stride-1 conv, no max-pool)."""

    def __init__(self, num_classes: int = 1000, small_input: bool = False) -> None:
        super().__init__()
        if small_input:
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        layers: list[nn.Module] = []
        cin = 64
        for i, width in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(cin, width, stride), BasicBlock(width, width)]
            cin = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _conv_bn(cin: int, cout: int, stride: int, groups: int = 1, k: int = 3) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(),
    ]


class MobileNetV1(nn.Module):
    """MobileNet-v1 layout (width 1.0): depthwise 3×3 then pointwise 1×1, 13 times."""

    CFG = (  # (out channels, stride) of each depthwise-separable block
        (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
        (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
    )  # fmt: skip

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers = _conv_bn(3, 32, 2)
        cin = 32
        for cout, stride in self.CFG:
            layers += _conv_bn(cin, cin, stride, groups=cin)  # depthwise
            layers += _conv_bn(cin, cout, 1, k=1)  # pointwise
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class TransformerClassifier(nn.Module):
    def __init__(self, d_model: int = 256, nhead: int = 4, layers: int = 4) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward=4 * d_model, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))


class RecurrentClassifier(nn.Module):
    def __init__(self, cell: type[nn.LSTM] | type[nn.GRU], features: int = 64) -> None:
        super().__init__()
        self.rnn = cell(features, 256, num_layers=2, batch_first=True)
        self.head = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def randomize_batchnorms(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """Non-trivial BN statistics, so that folding them is a real transform."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.2 * torch.randn(n, generator=gen))
    return model


@dataclass(frozen=True)
class BenchModel:
    """One reference model: how to build it and the shape of its input at a batch size."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: Callable[[int], tuple[int, ...]]
    description: str

    def make(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        model = self.build()
        return randomize_batchnorms(model, torch.Generator().manual_seed(seed)).eval()

    def example(self, batch: int, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed + 1)
        return torch.randn(*self.input_shape(batch), generator=gen)


BENCH_MODELS: dict[str, BenchModel] = {
    m.name: m
    for m in (
        BenchModel(
            "resnet18_224", ResNet18, lambda b: (b, 3, 224, 224), "ResNet-18, 224 px, 1000 classes"
        ),
        BenchModel(
            "resnet18_32",
            lambda: ResNet18(num_classes=10, small_input=True),
            lambda b: (b, 3, 32, 32),
            "ResNet-18 (CIFAR stem), 32 px, 10 classes",
        ),
        BenchModel(
            "mobilenet", MobileNetV1, lambda b: (b, 3, 224, 224), "MobileNet-v1 (dw+pw), 224 px"
        ),
        BenchModel(
            "mlp",
            lambda: nn.Sequential(
                nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
            ),
            lambda b: (b, 784),
            "MLP 784-512-512-10",
        ),
        BenchModel(
            "transformer",
            TransformerClassifier,
            lambda b: (b, SEQ_LEN, 256),
            f"Transformer encoder, 4 layers, d=256, 4 heads, seq {SEQ_LEN}",
        ),
        BenchModel(
            "lstm",
            lambda: RecurrentClassifier(nn.LSTM),
            lambda b: (b, SEQ_LEN, 64),
            f"LSTM 2 layers, hidden 256, seq {SEQ_LEN} × 64",
        ),
        BenchModel(
            "gru",
            lambda: RecurrentClassifier(nn.GRU),
            lambda b: (b, SEQ_LEN, 64),
            f"GRU 2 layers, hidden 256, seq {SEQ_LEN} × 64",
        ),
    )
}
