"""sgsc: Safety-Guided Self-Compression of neural networks.

The public API: :class:`SelfCompression` wraps any model with learnable per-channel bit
depths; :func:`save_compressed` / :func:`load_compressed` write and read the packed file;
:func:`build_preservation_set` picks the critical training examples that guide it.
"""

from sgsc.compress import SelfCompression
from sgsc.export import load_compressed, save_compressed
from sgsc.preservation import build_preservation_set

__version__ = "0.1.0"
__all__ = ["SelfCompression", "build_preservation_set", "load_compressed", "save_compressed"]
