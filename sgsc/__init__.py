"""sgsc: Safety-Guided Self-Compression of neural networks.

The public API: :class:`SelfCompression` wraps any model with learnable per-channel bit
depths (the size term); :class:`SafetyGuidance` adds the preservation term and the
feedback controller (:class:`FeedbackConfig`) to any training loop;
:class:`CompressionLoss` composes the method's loss for that loop;
:func:`save_compressed` / :func:`load_compressed` write and read the packed file
(:func:`reopen_compressed` wraps a file's model again, to write it another way);
:func:`build_preservation_set` picks the critical training examples that guide it.

The package is organised by role (``docs/ARCHITECTURE.md``): ``sgsc.structure`` (channel
graphs, tracing, pruning) under ``sgsc.core`` (the method) under ``sgsc.fileformat`` (the
packed file) under ``sgsc.reporting`` under ``sgsc.experiments`` (training, runs, studies,
baselines), with the command line (``sgsc.cli``) on top.
"""

import warnings

# tqdm.auto warns at import in a notebook kernel without ipywidgets; its plain text bars
# work there, so the warning says nothing a reader can act on.
warnings.filterwarnings("ignore", message="IProgress not found")

from sgsc.core.compress import SelfCompression  # noqa: E402  (after the filter, on purpose)
from sgsc.core.feedback import FeedbackConfig  # noqa: E402
from sgsc.core.loss import CompressionLoss  # noqa: E402
from sgsc.core.preservation import build_preservation_set  # noqa: E402
from sgsc.core.safety import SafetyGuidance  # noqa: E402
from sgsc.experiments import models as _models  # noqa: E402, F401  (registers the models)
from sgsc.fileformat.export import (  # noqa: E402
    load_compressed,
    reopen_compressed,
    save_compressed,
)

__version__ = "0.3.1"
__all__ = ["CompressionLoss", "FeedbackConfig", "SafetyGuidance", "SelfCompression",
           "build_preservation_set", "load_compressed", "reopen_compressed", "save_compressed"]
