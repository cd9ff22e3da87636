"""lit_rlhf: the InstructGPT recipe (SFT, reward model, PPO) as PyTorch Lightning modules."""

__version__ = "0.1.0"
