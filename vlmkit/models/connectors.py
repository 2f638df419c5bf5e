"""Connectors map encoder features (B, N, D_enc) to LLM input embeddings (B, M, D_llm).

A registry of plain classes: `build_connector(name, ...)` raises with the valid names. `mlp2x_gelu` uses the
parameter names of transformers' `LlavaMultiModalProjector` so it exports to native Llava unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TokenStacker(nn.Module):
    """Concatenate `factor` consecutive tokens: (B, N, D) -> (B, ceil(N/factor), D*factor), zero-padding the end.

    Used for audio so a second of speech becomes a bounded number of LLM tokens.
    """

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factor == 1:
            return x
        b, n, d = x.shape
        pad = (-n) % self.factor
        if pad:
            x = torch.cat([x, x.new_zeros(b, pad, d)], dim=1)
        return x.reshape(b, (n + pad) // self.factor, d * self.factor)


class LinearConnector(nn.Module):
    """One linear layer (LLaVA-1.0 'linear')."""

    def __init__(self, encoder_dim: int, text_dim: int, downsample: int = 1, **_):
        super().__init__()
        self.stack = TokenStacker(downsample)
        self.linear = nn.Linear(encoder_dim * downsample, text_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.stack(features))

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return math.ceil(num_input_tokens / self.stack.factor)


class MLP2xGeluConnector(nn.Module):
    """Linear -> GELU -> Linear (LLaVA-1.5 'mlp2x_gelu'); names match transformers' Llava projector."""

    def __init__(self, encoder_dim: int, text_dim: int, downsample: int = 1, **_):
        super().__init__()
        self.stack = TokenStacker(downsample)
        self.linear_1 = nn.Linear(encoder_dim * downsample, text_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(text_dim, text_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(self.stack(features))))

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return math.ceil(num_input_tokens / self.stack.factor)


class QFormerConnector(nn.Module):
    """BLIP-2 style: learned queries that self-attend and cross-attend to encoder features.

    (B, N, D_enc) -> (B, num_queries, D_llm), whatever N is.
    """

    def __init__(
        self,
        encoder_dim: int,
        text_dim: int,
        num_queries: int = 16,
        num_layers: int = 2,
        num_heads: int = 4,
        **_,
    ):
        super().__init__()
        width = encoder_dim
        while width % num_heads:
            num_heads -= 1
        self.queries = nn.Parameter(torch.randn(1, num_queries, width) * 0.02)
        layer = nn.TransformerDecoderLayer(
            d_model=width,
            nhead=num_heads,
            dim_feedforward=4 * width,
            dropout=0.0,
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerDecoder(layer, num_layers=num_layers)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, text_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        queries = self.queries.expand(features.shape[0], -1, -1)
        return self.proj(self.norm(self.layers(queries, features)))

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return self.queries.shape[1]


CONNECTORS: dict[str, type[nn.Module]] = {
    "linear": LinearConnector,
    "mlp2x_gelu": MLP2xGeluConnector,
    "qformer": QFormerConnector,
}


def build_connector(name: str, encoder_dim: int, text_dim: int, **kwargs) -> nn.Module:
    """Build a connector by name; unknown names raise with the valid ones."""
    if name not in CONNECTORS:
        raise ValueError(f"unknown connector '{name}'; valid: {', '.join(CONNECTORS)}")
    return CONNECTORS[name](encoder_dim, text_dim, **kwargs)
