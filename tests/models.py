"""Seeded toy-model factories shared by the test suite.

Every factory is ``make_<name>(seed=0) -> (model.eval(), example_inputs)``: small enough to run in
milliseconds on CPU, with BatchNorm layers carrying non-trivial running statistics and affine
parameters so that BatchNorm folding is really exercised.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ModelFactory = Callable[..., tuple[nn.Module, list[torch.Tensor]]]


def randomize_batchnorms(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """Give every BatchNorm random running stats and affine parameters (defaults are identity)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                if m.running_mean is not None:
                    m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                    m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                    m.bias.copy_(0.2 * torch.randn(n, generator=gen))
    return model


def _finish(
    model: nn.Module, shapes: list[tuple[int, ...]], gen: torch.Generator
) -> tuple[nn.Module, list[torch.Tensor]]:
    randomize_batchnorms(model, gen)
    inputs = [torch.randn(*shape, generator=gen) for shape in shapes]
    return model.eval(), inputs


class BasicBlock(nn.Module):
    """ResNet basic block: conv-BN-ReLU, conv-BN, residual add (1×1 strided downsample)."""

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


class TinyResNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def make_resnet(seed: int = 0) -> tuple[nn.Module, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return _finish(TinyResNet(), [(2, 3, 16, 16)], gen)


def _dw_pw(cin: int, cout: int, stride: int, multiplier: int = 1) -> nn.Sequential:
    mid = cin * multiplier
    return nn.Sequential(
        nn.Conv2d(cin, mid, 3, stride=stride, padding=1, groups=cin, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU6(),
        nn.Conv2d(mid, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(),
    )


def make_mobilenet(seed: int = 0) -> tuple[nn.Module, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        _dw_pw(8, 16, stride=1),
        _dw_pw(16, 40, stride=2, multiplier=2),  # 40 channels: mixing blocks of 16 and 24
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(40, 10),
    )
    return _finish(model, [(2, 3, 16, 16)], gen)


def make_mlp(seed: int = 0) -> tuple[nn.Module, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5)
    )
    return _finish(model, [(4, 20)], gen)


def make_deconv1d(seed: int = 0) -> tuple[nn.Module, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.ConvTranspose1d(8, 16, 4, stride=2, padding=1, output_padding=1),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.ConvTranspose1d(16, 8, 3, stride=2, padding=1, output_padding=1, groups=2),
        nn.ReLU(),
        nn.Conv1d(8, 2, 1),
    )
    return _finish(model, [(2, 8, 6)], gen)


def make_deconv2d(seed: int = 0) -> tuple[nn.Module, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.ConvTranspose2d(8, 16, 3, stride=2, padding=1, output_padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1, groups=4),
        nn.ReLU(),
        nn.Conv2d(8, 3, 1),
    )
    return _finish(model, [(2, 8, 4, 4)], gen)


class TransformerClassifier(nn.Module):
    def __init__(self, d_model: int = 16, nhead: int = 2, num_classes: int = 4) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward=32, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))


def make_transformer(seed: int = 0) -> tuple[nn.Module, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return _finish(TransformerClassifier(), [(2, 5, 16)], gen)


class RecurrentClassifier(nn.Module):
    def __init__(self, cell: type[nn.LSTM] | type[nn.GRU], num_classes: int = 3) -> None:
        super().__init__()
        self.rnn = cell(8, 16, batch_first=True)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def make_lstm(seed: int = 0) -> tuple[nn.Module, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return _finish(RecurrentClassifier(nn.LSTM), [(2, 6, 8)], gen)


def make_gru(seed: int = 0) -> tuple[nn.Module, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return _finish(RecurrentClassifier(nn.GRU), [(2, 6, 8)], gen)


MODEL_FACTORIES: dict[str, ModelFactory] = {
    "resnet": make_resnet,
    "mobilenet": make_mobilenet,
    "mlp": make_mlp,
    "deconv1d": make_deconv1d,
    "deconv2d": make_deconv2d,
    "transformer": make_transformer,
    "lstm": make_lstm,
    "gru": make_gru,
}


LIFECYCLE_INPUT = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
"""The example input of :func:`lifecycle_mlp`: the lifecycle tests protect and update it."""


def lifecycle_mlp(seed: int) -> nn.Module:
    """A 6-8-3 MLP whose weights ``seed`` draws: each seed another version of one model."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def protect_linux_version(protector: object, seed: int, *, new: bool) -> None:
    """Protect version ``seed`` of :func:`lifecycle_mlp` as model ``m`` (ONNX, LINUX): as a new
    model, or as an update of the deployed one."""
    from skprotect_pytorch.formats import ExportFormat, ExportPlatform

    method = protector.protect_new_model if new else protector.protect_updated_model
    method(
        lifecycle_mlp(seed),
        "m",
        [LIFECYCLE_INPUT],
        model_export_formats=ExportFormat.ONNX,
        deployment_platform=ExportPlatform.LINUX,
    )


def deploy_lifecycle(fmt: object, application: str = "app") -> Path:
    """Protect :func:`lifecycle_mlp` (seed 0) as model ``m`` of ``application`` for the export
    format ``fmt`` (TXT platform) in the current folder; returns the application's folder."""
    from skprotect_pytorch.protect import SkProtectorPyTorch

    SkProtectorPyTorch(application_name=application).protect_new_model(
        lifecycle_mlp(0), "m", [LIFECYCLE_INPUT], model_export_formats=fmt
    )
    return Path("outputs", application).resolve()


def replace_by_sparse_file(path: Path, size: int) -> None:
    """Replace ``path`` by a sparse file of ``size`` bytes (no disk space taken): a model file
    too large to read, for the runtime's size checks."""
    path.unlink()
    with open(path, "xb") as f:
        os.truncate(f.fileno(), size)
