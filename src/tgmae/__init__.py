"""tgmae: text-guided video masked autoencoders."""

__version__ = "0.1.0"
