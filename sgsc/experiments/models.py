"""The study's networks: a small MNIST CNN and a character-level transformer.

Both models declare their channel structure (:meth:`channel_graph`) so that zero-bit
channels and dead attention heads can be removed by :mod:`sgsc.structure.prune`, keep their
configuration as a plain dataclass in ``.config``, and register themselves with the file
format (:mod:`sgsc.fileformat.registry`), so that
``build_model(name, **dataclasses.asdict(model.config))`` rebuilds the architecture and a
packed file of either loads without a model handed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgsc.fileformat.registry import MODEL_REGISTRY, build_model, register_model
from sgsc.structure.graph import ChannelDependency, ChannelGraph, HeadDependency

__all__ = ["MODEL_REGISTRY", "CNNConfig", "CharTransformer", "MnistCNN", "TransformerConfig",
           "build_model"]

# ----------------------------------------------------------------------------- helpers


def _positive_ints(name: str, values: tuple[int, ...], length: int) -> tuple[int, ...]:
    """``values`` as a tuple of ``length`` positive ints (JSON gives lists back)."""
    try:
        values = tuple(values)
    except TypeError:
        raise ValueError(f"{name} must be {length} positive integers, got {values!r}") from None
    if len(values) != length or not all(_is_positive_int(v) for v in values):
        raise ValueError(f"{name} must be {length} positive integers, got {values!r}")
    return values


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _positive_int(name: str, value: int) -> None:
    if not _is_positive_int(value):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------- MNIST CNN


@dataclass
class CNNConfig:
    """Shape of :class:`MnistCNN`.  The defaults are the study's MNIST network."""

    in_channels: int = 1
    image_size: int = 28
    widths: tuple[int, int, int, int] = (32, 32, 64, 64)
    kernel_sizes: tuple[int, int, int, int] = (5, 5, 3, 3)
    num_classes: int = 10

    def __post_init__(self) -> None:
        _positive_int("in_channels", self.in_channels)
        _positive_int("image_size", self.image_size)
        _positive_int("num_classes", self.num_classes)
        self.widths = _positive_ints("widths", self.widths, 4)
        self.kernel_sizes = _positive_ints("kernel_sizes", self.kernel_sizes, 4)
        if self.feature_size < 1:
            raise ValueError(
                f"image_size={self.image_size} is too small for kernel_sizes="
                f"{self.kernel_sizes}: the feature map shrinks to nothing; use a larger "
                "image or smaller kernels (CNNConfig.for_digits() fits 8x8 images)"
            )

    @property
    def feature_size(self) -> int:
        """Side of the last feature map (3 for MNIST: 28 -> 24 -> 20 -> 10 -> 8 -> 6 -> 3)."""
        k1, k2, k3, k4 = self.kernel_sizes
        # Unpadded convs shrink by k - 1; each max-pool halves (floor).
        side = (self.image_size - k1 + 1 - k2 + 1) // 2
        return (side - k3 + 1 - k4 + 1) // 2

    @classmethod
    def for_digits(cls, **overrides: Any) -> CNNConfig:
        """A tiny variant for scikit-learn's 8x8 digits.

        Kernels (3, 3, 1, 1): 8 -> 6 -> 4 -> pool 2 -> 2 -> 2 -> pool 1, so the classifier
        reads one value per channel.  Larger kernels leave no room for the second pool.
        """
        config = dict(image_size=8, widths=(16, 16, 32, 32), kernel_sizes=(3, 3, 1, 1))
        return cls(**(config | overrides))


@register_model("mnist_cnn")
class MnistCNN(nn.Module):
    """conv-conv-BN-pool, conv-conv-BN-pool, linear; ReLU after every conv, no padding.

    Unpadded convolutions matter for pruning: a removed channel's constant output can then
    be folded exactly into the next layer's bias.
    """

    config_class: ClassVar[type] = CNNConfig
    last_conv: ClassVar[str] = "conv4"  # the layer Grad-CAM looks at

    def __init__(self, config: CNNConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CNNConfig()
        w1, w2, w3, w4 = config.widths
        k1, k2, k3, k4 = config.kernel_sizes
        self.conv1 = nn.Conv2d(config.in_channels, w1, k1)
        self.conv2 = nn.Conv2d(w1, w2, k2)
        self.bn1 = nn.BatchNorm2d(w2)
        self.conv3 = nn.Conv2d(w2, w3, k3)
        self.conv4 = nn.Conv2d(w3, w4, k4)
        self.bn2 = nn.BatchNorm2d(w4)
        self.fc = nn.Linear(w4 * config.feature_size**2, config.num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Flattened features that the classifier ``fc`` reads, shape (N, fc.in_features)."""
        x = F.max_pool2d(self.bn1(F.relu(self.conv2(F.relu(self.conv1(x))))), 2)
        x = F.max_pool2d(self.bn2(F.relu(self.conv4(F.relu(self.conv3(x))))), 2)
        return x.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, num_classes) for images (N, in_channels, image_size, image_size)."""
        return self.fc(self.features(x))

    def channel_graph(self) -> ChannelGraph:
        """conv1 -> conv2 -> bn1 -> conv3 -> conv4 -> bn2 -> fc (flattened, side^2 per channel)."""
        return ChannelGraph(channels=(
            ChannelDependency("conv1", ("conv2",)),
            ChannelDependency("conv2", ("conv3",), ("bn1",)),
            ChannelDependency("conv3", ("conv4",)),
            ChannelDependency("conv4", ("fc",), ("bn2",)),
        ))

    def example_input(self) -> Tensor:
        """One seeded random image (1, C, H, W) on the model's device, for probes and FLOPs."""
        c = self.config
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(1, c.in_channels, c.image_size, c.image_size, generator=generator)
        return x.to(_device_of(self))


# ----------------------------------------------------------------------------- transformer


@dataclass
class TransformerConfig:
    """Shape of :class:`CharTransformer` (a small nanoGPT)."""

    vocab_size: int = 65
    block_size: int = 32
    n_embd: int = 64
    n_head: int = 4
    n_layer: int = 4
    bias: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_embd", "n_head", "n_layer"):
            _positive_int(name, getattr(self, name))
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}; "
                "pick n_embd as a multiple of n_head"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate q, k, v projections.

    Separate projections keep each head in a contiguous block of rows, so a dead head is
    removed by slicing; the head count is read from ``q`` at every call for that reason.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.head_size = config.head_size
        self.q = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.k = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.v = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        mask = torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool))
        self.register_buffer("mask", mask.view(1, 1, config.block_size, config.block_size),
                             persistent=False)

    @property
    def n_head(self) -> int:
        """Heads left (pruning may have removed some)."""
        return self.q.out_features // self.head_size

    def forward(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        nh, hs = self.n_head, self.head_size
        q = self.q(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k(x).view(B, T, nh, hs).transpose(1, 2)
        v = self.v(x).view(B, T, nh, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        att = att.masked_fill(~self.mask[:, :, :T, :T], float("-inf"))
        att = self.attn_dropout(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(B, T, nh * hs)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    """ReLU feed-forward with 4x hidden width (ReLU so dead fc1 rows give constants)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.fc2 = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(F.relu(self.fc1(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


@register_model("char_transformer")
class CharTransformer(nn.Module):
    """Character-level GPT: token + position embeddings, blocks, final LayerNorm, lm_head.

    The lm_head is not tied to the token embedding, so each can be quantised on its own.
    """

    config_class: ClassVar[type] = TransformerConfig

    def __init__(self, config: TransformerConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or TransformerConfig()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias)
        self.apply(self._init_weights)
        # GPT-2: scale residual projections down so the residual stream does not grow
        # with depth.
        for name, param in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.fc2.weight")):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits (B, T, vocab_size) for token ids (B, T), and the mean cross-entropy
        against ``targets`` (B, T) when given (positions with target -1 are ignored)."""
        length = idx.shape[1]
        if length > self.config.block_size:
            raise ValueError(f"sequence length {length} exceeds block_size="
                             f"{self.config.block_size}; crop the input or build the model "
                             "with a larger block_size")
        pos = torch.arange(length, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Append ``max_new_tokens`` sampled tokens to ``idx`` (B, T); call in eval mode."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size:])
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.shape[-1]))
                logits[logits < v[:, [-1]]] = -float("inf")
            probs = F.softmax(logits, dim=-1)
            idx = torch.cat([idx, torch.multinomial(probs, 1, generator=generator)], dim=1)
        return idx

    def channel_graph(self) -> ChannelGraph:
        """Per block: the attention heads (q, k, v -> proj) and the MLP hidden (fc1 -> fc2)."""
        hs = self.config.head_size
        prefixes = [f"blocks.{i}" for i in range(len(self.blocks))]
        return ChannelGraph(
            channels=tuple(ChannelDependency(f"{p}.mlp.fc1", (f"{p}.mlp.fc2",)) for p in prefixes),
            heads=tuple(HeadDependency(f"{p}.attn.q", f"{p}.attn.k", f"{p}.attn.v",
                                       f"{p}.attn.proj", hs) for p in prefixes),
        )

    def example_input(self) -> Tensor:
        """A seeded random token sequence (1, block_size) on the model's device."""
        generator = torch.Generator().manual_seed(0)
        idx = torch.randint(self.config.vocab_size, (1, self.config.block_size),
                            generator=generator)
        return idx.to(_device_of(self))
