"""The architectures a packed file can name, so that it loads without a model handed in.

A model class registers itself (``@register_model("mnist_cnn")``) where it is defined, and
carries its config as a dataclass (``config_class``, instance at ``model.config``); a file
records the name and the config, and :func:`build_model` rebuilds the architecture.  The
registry knows nothing of any model (``sgsc.experiments.models`` registers the package's
own; importing :mod:`sgsc` imports it), so the file format sits below the experiments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

MODEL_REGISTRY: dict[str, type[nn.Module]] = {}


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: files of ``name`` rebuild this class from its ``config_class``."""

    def register(cls: type[nn.Module]) -> type[nn.Module]:
        if not dataclasses.is_dataclass(getattr(cls, "config_class", None)):
            raise TypeError(f"{cls.__name__} needs a dataclass config_class to be registered")
        if MODEL_REGISTRY.get(name, cls) is not cls:
            raise ValueError(f"model name {name!r} is taken by {MODEL_REGISTRY[name].__name__}")
        MODEL_REGISTRY[name] = cls
        return cls

    return register


def build_model(name: str, **config: Any) -> nn.Module:
    """Build registered model ``name`` from its config fields (``dataclasses.asdict`` output).

    Raises:
        ValueError: unknown model name, unknown config field or invalid config value.
    """
    if name not in MODEL_REGISTRY:
        valid = ", ".join(sorted(MODEL_REGISTRY))
        raise ValueError(f"unknown model {name!r}; valid names: {valid}")
    cls = MODEL_REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(f"unknown config field(s) {', '.join(unknown)} for model {name!r}; "
                         f"valid fields: {', '.join(sorted(fields))}")
    return cls(cls.config_class(**config))


def registered_name(model: nn.Module) -> str | None:
    """The name ``model``'s class is registered under, if any."""
    for name, cls in MODEL_REGISTRY.items():
        if type(model) is cls:
            return name
    return None
