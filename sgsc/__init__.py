"""sgsc: Safety-Guided Self-Compression of neural networks.

The public API: :class:`SelfCompression` wraps any model with learnable per-channel bit
depths (the size term); :class:`SafetyGuidance` adds the preservation term and the
feedback controller (:class:`FeedbackConfig`) to any training loop;
:func:`save_compressed` / :func:`load_compressed` write and read the packed file;
:func:`build_preservation_set` picks the critical training examples that guide it.
"""

from sgsc.compress import SelfCompression
from sgsc.export import load_compressed, save_compressed
from sgsc.feedback import FeedbackConfig
from sgsc.preservation import build_preservation_set
from sgsc.safety import SafetyGuidance

__version__ = "0.2.0"
__all__ = ["FeedbackConfig", "SafetyGuidance", "SelfCompression", "build_preservation_set",
           "load_compressed", "save_compressed"]
