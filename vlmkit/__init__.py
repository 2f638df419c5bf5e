"""vlmkit: multimodal instruction tuning and alignment, from SSL encoders to PPO."""

__version__ = "0.1.0"
