"""Small PyTorch models and ONNX export helpers for the tests (needs the `torch` extra).

Every model re-randomizes each parameter from its own seeded generator, so no two layers hold
identical tensors (the dynamo exporter deduplicates identical initializers).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, width=64, depth=4, inputs=20, classes=5):
        super().__init__()
        self.stem = nn.Linear(inputs, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for block in self.blocks:
            x = torch.relu(block(x))
        return self.head(x)


class ConvBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return x + torch.relu(self.bn(self.conv(x)))


class CNN(nn.Module):
    """A conv stem with BatchNorm, residual conv blocks, global pooling and a linear head."""

    def __init__(self, width=16, depth=3, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.blocks = nn.ModuleList(ConvBlock(width) for _ in range(depth))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=(2, 3)))


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(x)


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """DeiT-style: conv patch embedding, class token, position embedding, pre-LN blocks, head."""

    def __init__(self, width=64, depth=4, heads=4, image=16, patch=4, channels=3, classes=10):
        super().__init__()
        tokens = (image // patch) ** 2
        self.patch = nn.Conv2d(channels, width, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, width))
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Give every parameter and BatchNorm statistic distinct random values (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if not p.is_floating_point():
                continue
            if name.endswith("running_var"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def example_input(model: nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if isinstance(model, MLP):
        return torch.randn(2, model.stem.in_features, generator=gen)
    if isinstance(model, CNN):
        return torch.randn(2, 3, 8, 8, generator=gen)
    return torch.randn(2, model.patch.in_channels, 16, 16, generator=gen)


def export(model: nn.Module, path: str | Path, exporter: str = "legacy") -> Path:
    """Export `model` with the torch 'legacy' (TorchScript) or 'dynamo' exporter.

    Both fold BatchNorm into Conv in eval mode; 'legacy-bn' (legacy, no constant folding)
    keeps BatchNormalization nodes with their running statistics.
    """
    path = Path(path)
    x = example_input(model)
    kwargs = dict(input_names=["x"], output_names=["y"], opset_version=18)
    if exporter in ("legacy", "legacy-bn"):
        torch.onnx.export(model, (x,), str(path), dynamo=False, dynamic_axes={"x": {0: "batch"}},
                          do_constant_folding=exporter == "legacy", **kwargs)
    elif exporter == "dynamo":
        torch.onnx.export(model, (x,), str(path), dynamo=True, external_data=True,
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},), **kwargs)
    else:
        raise ValueError(exporter)
    return path


class LastHidden(nn.Module):
    """A transformers model as a plain `inputs -> last_hidden_state` module, for export."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).last_hidden_state
