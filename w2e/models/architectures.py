"""Architectures the worlds share besides timm's ViT: a small CNN used as the stronger model."""
from __future__ import annotations

import torch
from torch import nn


class SmallConvNet(nn.Module):
    """A VGG-style CNN (two conv stages with pooling, one more conv, global pooling)."""

    def __init__(self, in_chans: int, num_classes: int, widths: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        for stage, width in enumerate(widths):
            repeats = 2 if stage < len(widths) - 1 else 1
            for _ in range(repeats):
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                channels = width
            if stage < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))
