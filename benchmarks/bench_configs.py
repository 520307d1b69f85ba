"""Model sizes shared by the torch (``models.py``) and Flax (``flax_models.py``) benchmark models."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPTConfig:
    vocab: int = 50257
    positions: int = 1024
    width: int = 768
    layers: int = 12
    heads: int = 12


GPT2_SMALL = GPTConfig()
TRANSFORMER_1B = GPTConfig(positions=2048, width=2048, layers=18, heads=16)
GPT2_XL = GPTConfig(width=1600, layers=48, heads=25)  # 1,557,611,200 parameters
GPT_TINY = GPTConfig(vocab=97, positions=16, width=32, layers=2, heads=4)
