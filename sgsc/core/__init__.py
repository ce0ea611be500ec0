"""The method: per-channel quantizers (``quant``), self-compression's size term and
pruning (``compress``), the loss (``loss``), the preservation set (``preservation``), the
safety guidance (``safety``) with its feedback controller (``feedback``), and what a model
is trained to do (``tasks``).  Everything a user's own training loop needs."""
