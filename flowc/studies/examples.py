"""Built-in example models (seeded), saved as torch.export programs by `flowc example`.

- `mlp`: 784 -> 512 -> 256 -> 10 with ReLU (the foundation acceptance model).
- `block`: a tiny transformer-like block: LayerNorm, a GELU MLP with a residual add, a
  SiLU-gated projection and a softmax head (no attention matmuls: those are activation x
  activation GEMMs, covered by the transformer models).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, sizes: tuple[int, ...] = (784, 512, 256, 10)) -> None:
        super().__init__()
        self.fc1 = nn.Linear(sizes[0], sizes[1])
        self.fc2 = nn.Linear(sizes[1], sizes[2])
        self.fc3 = nn.Linear(sizes[2], sizes[3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, d: int = 128, hidden: int = 256, classes: int = 16) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.up = nn.Linear(d, hidden)
        self.down = nn.Linear(hidden, d)
        self.norm2 = nn.LayerNorm(d)
        self.gate = nn.Linear(d, d, bias=False)
        self.proj = nn.Linear(d, d)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.down(nn.functional.gelu(self.up(self.norm1(x))))
        g = self.norm2(h)
        h = h + self.proj(nn.functional.silu(self.gate(g)) * g)
        return torch.softmax(self.head(h), dim=-1)


EXAMPLES = {"mlp": (MLP, (8, 784)), "block": (Block, (2, 16, 128))}


def build(name: str, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    if name not in EXAMPLES:
        from flowc.errors import UsageError

        raise UsageError(f"unknown example {name!r} (available: {', '.join(EXAMPLES)})")
    cls, shape = EXAMPLES[name]
    torch.manual_seed(seed)
    model = cls().eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 100))
    return model, (x,)


def save_example(name: str, path: str | Path, seed: int = 0) -> Path:
    """Export the example with torch.export and save it (deterministic for a seed)."""
    model, inputs = build(name, seed)
    ep = torch.export.export(model, inputs)
    path = Path(path)
    torch.export.save(ep, str(path))
    return path
