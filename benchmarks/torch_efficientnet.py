"""EfficientNet-B0 in plain PyTorch, for `bench_serve.py`'s in-run PyTorch baseline when
torchvision cannot be imported (its PyPI wheel is built against CUDA libraries that a CPU-only
torch lacks). Same layers as torchvision's `efficientnet_b0` (4.02 M parameters with 7 classes,
as torchvision's); untrained: latency does not depend on the weights.
"""

from __future__ import annotations

# (expand ratio, kernel, stride, in, out, repeats): torchvision's EfficientNet-B0 stages
B0_STAGES = (
    (1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1),
)  # fmt: skip


def plain_torch_efficientnet_b0(classes: int):
    """EfficientNet-B0 with torchvision's layer layout (MBConv + squeeze-excite, SiLU, BN)."""
    from torch import nn

    def conv_bn(cin, cout, kernel, stride=1, groups=1, act=True):
        layers = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        return nn.Sequential(*layers, *([nn.SiLU()] if act else []))

    class MBConv(nn.Module):
        def __init__(self, expand, kernel, stride, cin, cout):
            super().__init__()
            mid = cin * expand
            squeeze = max(1, cin // 4)
            self.residual = stride == 1 and cin == cout
            self.body = nn.Sequential(
                *([conv_bn(cin, mid, 1)] if expand != 1 else []),
                conv_bn(mid, mid, kernel, stride, groups=mid),
            )
            self.se = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Conv2d(mid, squeeze, 1), nn.SiLU(),
                nn.Conv2d(squeeze, mid, 1), nn.Sigmoid(),
            )  # fmt: skip
            self.project = conv_bn(mid, cout, 1, act=False)

        def forward(self, x):
            y = self.body(x)
            y = self.project(y * self.se(y))
            return x + y if self.residual else y

    blocks = [conv_bn(3, 32, 3, 2)]
    for expand, kernel, stride, cin, cout, repeats in B0_STAGES:
        for i in range(repeats):
            blocks.append(
                MBConv(expand, kernel, stride if i == 0 else 1, cin if i == 0 else cout, cout)
            )
    blocks += [conv_bn(320, 1280, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*blocks, nn.Dropout(0.2), nn.Linear(1280, classes))
