"""Full fine-tuning: every weight trains (AdamW, fused on GPU); DeepSpeed ZeRO for scale."""

from __future__ import annotations

from .base import Method


class Full(Method):
    name = "full"
