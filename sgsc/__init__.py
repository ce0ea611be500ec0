"""sgsc: Safety-Guided Self-Compression of neural networks.

The public API: :class:`SelfCompression` wraps any model with learnable per-channel bit
depths (the size term); :class:`SafetyGuidance` adds the preservation term and the
feedback controller (:class:`FeedbackConfig`) to any training loop;
:func:`save_compressed` / :func:`load_compressed` write and read the packed file;
:func:`build_preservation_set` picks the critical training examples that guide it.

The package is organised by role (``docs/ARCHITECTURE.md``): ``sgsc.structure`` (channel
graphs, tracing, pruning) under ``sgsc.core`` (the method) under ``sgsc.fileformat`` (the
packed file) under ``sgsc.reporting`` under ``sgsc.experiments`` (training, runs, studies,
baselines), with the command line (``sgsc.cli``) on top.
"""

from sgsc.core.compress import SelfCompression
from sgsc.core.feedback import FeedbackConfig
from sgsc.core.preservation import build_preservation_set
from sgsc.core.safety import SafetyGuidance
from sgsc.experiments import models as _models  # noqa: F401  (registers the study's models)
from sgsc.fileformat.export import load_compressed, save_compressed

__version__ = "0.2.0"
__all__ = ["FeedbackConfig", "SafetyGuidance", "SelfCompression", "build_preservation_set",
           "load_compressed", "save_compressed"]
