"""Structure: which layers share channels (``graph``), found by tracing any model with
torch.fx (``trace``), and the physical removal of zero-bit channels and dead heads
(``prune``).  Knows nothing of quantization."""
