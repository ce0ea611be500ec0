"""sgsc: Safety-Guided Self-Compression of neural networks."""

__version__ = "0.1.0"
