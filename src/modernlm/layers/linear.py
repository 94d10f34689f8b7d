"""nn.Linear whose inference forward may take the fast small-batch kernel (see modernlm.kernels); same weights,
same names, same results as nn.Linear within float tolerance."""

from __future__ import annotations

import torch
from torch import nn

from .. import kernels


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(x, self.weight, self.bias)
