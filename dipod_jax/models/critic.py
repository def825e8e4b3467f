"""State-value critic MLP."""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax


class CriticMLP(nn.Module):
    """obs [..., S] -> V(s) [...]; SiLU hidden layers (FPO reference: 5 x 256).

    Attributes:
      hidden_sizes: hidden widths.
    """

    hidden_sizes: Sequence[int]

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        features = obs
        for width in self.hidden_sizes:
            features = nn.silu(nn.Dense(width)(features))
        return nn.Dense(1)(features)[..., 0]
