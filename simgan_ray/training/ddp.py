"""torch.distributed as the training updates use it: whether this process is a rank, the module
inside a DDP wrapper, a module's parameters frozen for a block. Pure torch."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def distributed() -> bool:
    """Whether this process is one rank of a torch.distributed group (a Ray Train worker)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside a DDP wrapper (calls on it neither sync nor register hooks)."""
    return getattr(model, "module", model)


@contextmanager
def frozen(module: nn.Module):
    """No parameter grads for `module` inside the block (grads still flow to its input)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p in params:
            p.requires_grad_(True)
