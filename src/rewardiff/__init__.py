"""rewardiff: improve text-to-image diffusion models with AI feedback."""

__version__ = "0.1.0"
