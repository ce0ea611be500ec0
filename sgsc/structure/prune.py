"""Physically remove zero-bit channels and dead attention heads without changing the function.

A channel whose weight row is all zeros still outputs a constant (its bias, through ReLU,
BatchNorm, pooling...), and a head whose q, k and v rows are all zeros outputs its value
bias.  :func:`prune_channels` measures those constants with one probe forward pass, folds
them into the bias of the layer that reads them, and then slices the weights:

* producer rows (weight, bias, per-row parametrization state such as bit depths),
* follower entries (BatchNorm weight, bias and running statistics),
* consumer input channels (Conv dim 1; Linear after a flatten: a group of columns per channel),
* dead heads' q/k/v rows and output-projection columns.

The probe runs in eval mode, so the pruned model matches the unpruned one exactly in eval
mode (BatchNorm running statistics).  In train mode BatchNorm would normalise a constant
channel to its shift instead; training simply continues from the eval-mode function.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.nn.utils import parametrize

from sgsc.structure.graph import ChannelGraph
from sgsc.structure.plan import Cut, check_graph, plan_removal

# ----------------------------------------------------------------------------- result


@dataclass
class PruneResult:
    """What :func:`prune_channels` removed.

    ``kept`` maps a parameter's qualified name (as in ``model.named_parameters()`` after
    pruning) to ``{dim: kept indices}``; a conv weight can be cut along both dims (its own
    dead rows and its producer's dead channels).  Use :meth:`select` to cut optimizer
    state the same way.
    """

    kept: dict[str, dict[int, Tensor]] = field(default_factory=dict)
    removed_channels: dict[str, int] = field(default_factory=dict)  # producer -> count
    removed_heads: int = 0
    params_before: int = 0
    params_after: int = 0
    flops_before: int = 0  # multiply-accumulates of Conv/Linear layers on example_input
    flops_after: int = 0
    new_parameters: list[str] = field(default_factory=list)  # biases created for folding

    def select(self, name: str, tensor: Tensor) -> Tensor:
        """Cut ``tensor`` (shaped like parameter ``name`` before pruning) like the parameter."""
        for dim, index in self.kept.get(name, {}).items():
            tensor = tensor.index_select(dim, index.to(tensor.device))
        return tensor


# ----------------------------------------------------------------------------- tensors by name


def raw_weight(module: nn.Module) -> Tensor | None:
    """The stored weight: the parametrization's ``original`` if there is one."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module._parameters.get("weight")


def _resolve(model: nn.Module, qualified_name: str) -> tuple[nn.Module, str, nn.Module]:
    """(module holding the tensor, attribute name, layer whose shape attributes follow it)."""
    module_name, _, attr = qualified_name.rpartition(".")
    try:
        holder = model.get_submodule(module_name)
    except AttributeError as err:
        raise KeyError(f"{qualified_name!r}: no module {module_name!r} in the model") from err
    parts = module_name.split(".") if module_name else []
    # "conv1.parametrizations.weight.original" and ".0.bit_depth" both belong to conv1.
    owner = holder
    if "parametrizations" in parts:
        owner = model.get_submodule(".".join(parts[: parts.index("parametrizations")]))
    if parametrize.is_parametrized(holder, attr):
        plist = holder.parametrizations[attr]
        if not hasattr(plist, "original"):
            raise NotImplementedError(f"{qualified_name}: parametrizations with several "
                                      "originals (tuple right_inverse) are not supported")
        holder, attr = plist, "original"
    return holder, attr, owner


def _get_tensor(model: nn.Module, qualified_name: str) -> Tensor:
    holder, attr, _ = _resolve(model, qualified_name)
    return getattr(holder, attr)


def _sync_shape_attrs(module: nn.Module) -> None:
    """Make in/out_channels, in/out_features, num_features agree with the stored tensors."""
    weight = raw_weight(module)
    if isinstance(module, _ConvTransposeNd):
        raise NotImplementedError("transposed convolutions are not supported")
    if isinstance(module, _ConvNd) and weight is not None:
        if 1 < module.groups == module.out_channels != weight.shape[0]:
            module.groups = weight.shape[0]  # depthwise: one group per channel, as before
        module.out_channels = weight.shape[0]
        module.in_channels = weight.shape[1] * module.groups
    elif isinstance(module, nn.Linear) and weight is not None:
        module.out_features, module.in_features = weight.shape
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        reference = weight if weight is not None else module.running_mean
        if reference is not None:
            module.num_features = reference.shape[0]
    elif isinstance(module, nn.LayerNorm) and weight is not None:
        module.normalized_shape = tuple(weight.shape)
    elif isinstance(module, nn.Embedding) and weight is not None:
        module.num_embeddings, module.embedding_dim = weight.shape


def replace_tensor(model: nn.Module, qualified_name: str, tensor: Tensor) -> None:
    """Set parameter or buffer ``qualified_name`` to ``tensor``, whose shape may differ.

    ``"conv1.weight"`` of a parametrized conv sets its ``parametrizations.weight.original``.
    Parameters become new ``nn.Parameter`` objects (keeping ``requires_grad``); a parameter
    slot that held ``None`` (a missing bias) is filled.  The owning layer's shape attributes
    (in/out_channels, in/out_features, num_features, ...) are updated to match.

    Raises:
        KeyError: ``qualified_name`` is neither a parameter nor a buffer of ``model``.
    """
    holder, attr, owner = _resolve(model, qualified_name)
    if attr in holder._parameters:
        old = holder._parameters[attr]
        requires_grad = True if old is None else old.requires_grad
        setattr(holder, attr, nn.Parameter(tensor.detach(), requires_grad=requires_grad))
    elif attr in holder._buffers:
        setattr(holder, attr, tensor.detach())
    else:
        raise KeyError(f"{qualified_name!r} is neither a parameter nor a buffer of the model")
    _sync_shape_attrs(owner)


def load_state_resizing(model: nn.Module, state: dict[str, Tensor]) -> bool:
    """``model.load_state_dict(state)`` for a ``state`` of a pruned (or less pruned) model.

    Every tensor whose shape differs -- and every parameter ``state`` has and ``model``
    lacks, such as a bias that pruning created -- is replaced first (:func:`replace_tensor`,
    which also updates the layers' shape attributes), so a checkpoint taken after some
    channels were removed loads into a fresh model, and a larger selected state back into a
    model that shrank since.  Returns whether any shape changed: the parameters are then
    new objects, and an optimizer built on the old ones must be built again.
    """
    current = model.state_dict()
    resized = False
    for key, value in state.items():
        if key not in current or current[key].shape != value.shape:
            replace_tensor(model, key, value.to(current[key].device if key in current
                                                else value.device))
            resized = True
    model.load_state_dict(state)
    return resized


# ----------------------------------------------------------------------------- probing


def _call(model: nn.Module, example_input: Any) -> Any:
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


def _macs(module: nn.Module, output: Tensor) -> int:
    """Multiply-accumulates of one Conv/Linear call: outputs x inputs each output reads."""
    weight = raw_weight(module)
    return output.numel() * math.prod(weight.shape[1:])


def _probe(model: nn.Module, example_input: Any,
           capture: tuple[str, ...] = ()) -> tuple[int, dict[str, Tensor]]:
    """One eval-mode forward pass: (Conv/Linear MACs, inputs of the ``capture`` modules).

    Eval mode because that is the deterministic function to preserve, and so that the
    probe neither updates BatchNorm statistics nor drops anything out.
    """
    flops = 0
    inputs: dict[str, Tensor] = {}

    def count(module: nn.Module, args: tuple, output: Tensor) -> None:
        nonlocal flops
        flops += _macs(module, output)

    def store(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if name in inputs:
                raise NotImplementedError(f"{name} is called more than once per forward pass; "
                                          "cannot fold removed channels into it")
            inputs[name] = args[0].detach()
        return hook

    handles = [m.register_forward_hook(count) for m in model.modules()
               if isinstance(m, (_ConvNd, nn.Linear))]
    handles += [model.get_submodule(n).register_forward_pre_hook(store(n)) for n in capture]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            _call(model, example_input)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    missing = sorted(set(capture) - set(inputs))
    if missing:
        raise RuntimeError(f"{', '.join(missing)} did not run in the probe forward pass; "
                           "check the channel graph and example_input")
    return flops, inputs


def count_flops(model: nn.Module, example_input: Any) -> int:
    """Multiply-accumulates of all Conv and Linear layers for one forward of ``example_input``.

    Attention's q.k and att.v products are not Conv/Linear and are not counted.
    """
    return _probe(model, example_input)[0]


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- checking


def _dead_mask(model: nn.Module, name: str, mask: Tensor) -> Tensor:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"dead_rows names {name!r}, which is not a module of the model") from None
    weight = raw_weight(module)
    mask = torch.as_tensor(mask).to(torch.bool).flatten()
    if weight is None or mask.numel() != weight.shape[0]:
        rows = None if weight is None else weight.shape[0]
        raise ValueError(f"dead_rows[{name!r}] has {mask.numel()} entries but the layer has "
                         f"{rows} output rows")
    return mask.to(weight.device)


# ----------------------------------------------------------------------------- folding


def _units(module: nn.Module, tensor: Tensor, n_units: int, is_weight: bool) -> Tensor:
    """View a consumer's input (or weight) as (rows, units, positions per unit)."""
    if isinstance(module, _ConvNd):
        if module.groups != 1:
            raise NotImplementedError("grouped convolutions cannot consume pruned channels")
        if tensor.shape[1] != n_units:
            raise ValueError(f"a conv with {tensor.shape[1]} input channels cannot read "
                             f"{n_units} channels; check the channel graph")
        return tensor.reshape(tensor.shape[0], n_units, -1)
    if isinstance(module, nn.Linear):
        if module.in_features % n_units:
            raise ValueError(f"Linear with in_features={module.in_features} cannot read "
                             f"{n_units} channels (not a multiple)")
        per_unit = module.in_features // n_units
        rows = tensor.shape[0] if is_weight else -1
        return tensor.reshape(rows, n_units, per_unit)
    raise NotImplementedError(f"cannot prune the inputs of {type(module).__name__}")


def _zero_padded(module: nn.Module) -> bool:
    """Whether a conv pads with zeros, which makes a constant input position-dependent."""
    if not isinstance(module, _ConvNd) or module.padding_mode != "zeros":
        return False
    if isinstance(module.padding, str):
        return module.padding == "same"
    return any(p != 0 for p in module.padding)


def _constants(module: nn.Module, x: Tensor, cut: Cut) -> Tensor:
    """The value each removed unit feeds ``module`` (NaN for a unit whose input is not
    constant over the batch and positions)."""
    xs = _units(module, x, cut.n_units, is_weight=False)[:, cut.removed_index, :]
    const = xs[0, :, 0]
    same = torch.isclose(xs, const[None, :, None].expand_as(xs), rtol=1e-5, atol=1e-6)
    return torch.where(same.all(dim=2).all(dim=0), const, torch.full_like(const, float("nan")))


def _foldable(model: nn.Module, cut: Cut, inputs: dict[str, Tensor]) -> Tensor:
    """Per removed unit of ``cut``: whether every consumer can absorb it exactly (its
    input constant, and zero where the consumer zero-pads)."""
    ok = torch.ones(len(cut.removed_index), dtype=torch.bool, device=cut.removed.device)
    for name in cut.consumers:
        module = model.get_submodule(name)
        const = _constants(module, inputs[name], cut)
        ok &= torch.isfinite(const) & ((const == 0) | (not _zero_padded(module)))
    return ok


def _keep_unfoldable(model: nn.Module, cuts: list[Cut], inputs: dict[str, Tensor]
                     ) -> list[Cut]:
    """The cuts with every unit that cannot be folded exactly put back (exact_only)."""
    out = []
    for cut in cuts:
        ok = _foldable(model, cut, inputs)
        if ok.all():
            out.append(cut)
            continue
        removed = cut.removed_index[ok]
        if not len(removed):
            continue
        mask = torch.zeros(cut.n_units, dtype=torch.bool, device=removed.device)
        mask[removed] = True
        out.append(dataclasses.replace(cut, removed=mask))
    return out


def _folded_bias(module: nn.Module, name: str, x: Tensor, cut: Cut) -> Tensor | None:
    """What the removed units add to ``module``'s output (None if nothing).

    The removed units' inputs must be constant over the batch and positions; their
    contribution is then ``sum W[:, unit, :] * const[unit]``, a per-output constant.
    """
    const = _constants(module, x, cut)
    if not torch.isfinite(const).all():
        raise ValueError(f"removed units of {cut.source} feed {name} values that are not "
                         "constant; their weight rows are probably not all zero")
    if not const.any():
        return None
    if _zero_padded(module):
        raise ValueError(f"{name} zero-pads its input, so the non-zero constants of the removed "
                         f"channels of {cut.source} cannot be folded into a bias; zero those "
                         "channels' biases first or use an unpadded conv")
    with torch.no_grad():
        weight = _units(module, module.weight, cut.n_units, is_weight=True)
        return torch.einsum("ouk,u->o", weight[:, cut.removed_index, :],
                            const.to(weight.dtype))


def _add_to_bias(module: nn.Module, delta: Tensor) -> bool:
    """Add ``delta`` to the bias in place; create the bias if missing.  True if created."""
    if module.bias is None:
        module.bias = nn.Parameter(delta.detach().clone())
        return True
    with torch.no_grad():
        module.bias.add_(delta.to(module.bias.dtype))
    return False


# ----------------------------------------------------------------------------- slicing


def _weight_name(model: nn.Module, name: str) -> str:
    module = model.get_submodule(name)
    if parametrize.is_parametrized(module, "weight"):
        return f"{name}.parametrizations.weight.original"
    return f"{name}.weight"


def _take(model: nn.Module, qualified_name: str, dim: int, index: Tensor,
          result: PruneResult) -> None:
    tensor = _get_tensor(model, qualified_name)
    replace_tensor(model, qualified_name, tensor.index_select(dim, index.to(tensor.device)))
    result.kept.setdefault(qualified_name, {})[dim] = index


def _cut_rows(model: nn.Module, name: str, index: Tensor, result: PruneResult) -> None:
    """Keep rows ``index`` of a producer: weight, bias and per-row parametrization state
    (a depthwise convolution keeps one group per channel, see _sync_shape_attrs)."""
    module = model.get_submodule(name)
    _take(model, _weight_name(model, name), 0, index, result)
    if getattr(module, "bias", None) is not None:
        _take(model, f"{name}.bias", 0, index, result)
    if not parametrize.is_parametrized(module, "weight"):
        return
    for i, parametrization in enumerate(module.parametrizations.weight):
        if not hasattr(parametrization, "select_channels"):
            continue
        before = {n: p.shape for n, p in parametrization.named_parameters()}
        parametrization.select_channels(index)
        for n, p in parametrization.named_parameters():
            if before.get(n) != p.shape:
                result.kept[f"{name}.parametrizations.weight.{i}.{n}"] = {0: index}


def _cut_follower(model: nn.Module, name: str, n_rows: int, index: Tensor,
                  result: PruneResult) -> None:
    """Keep entries ``index`` of every per-channel tensor of a follower (BatchNorm)."""
    module = model.get_submodule(name)
    tensors = list(module._parameters.items()) + list(module._buffers.items())
    for attr, tensor in tensors:
        if tensor is not None and tensor.dim() >= 1 and tensor.shape[0] == n_rows:
            _take(model, f"{name}.{attr}", 0, index, result)


def _cut_columns(model: nn.Module, name: str, cut: Cut, result: PruneResult) -> None:
    """Keep the input units ``cut.kept_index`` of a consumer (dim 1 of its weight)."""
    module = model.get_submodule(name)
    index = cut.kept_index
    if isinstance(module, nn.Linear):
        # A flattened feature map: each channel owns in_features // n_units consecutive columns.
        per_unit = module.in_features // cut.n_units
        offsets = torch.arange(per_unit, device=index.device)
        index = (index[:, None] * per_unit + offsets).flatten()
    _take(model, _weight_name(model, name), 1, index, result)


# ----------------------------------------------------------------------------- entry point


def prune_channels(model: nn.Module, dead_rows: dict[str, Tensor], graph: ChannelGraph,
                   example_input: Any) -> PruneResult:
    """Remove dead producer channels and dead heads from ``model`` in place.

    Args:
        model: the network (plain or with weight parametrizations).
        dead_rows: module name -> bool mask over its weight rows; True rows must be zero in
            the effective (e.g. quantised) weight.  Rows of layers that no dependency of
            ``graph`` covers stay where they are.
        graph: which layers share channels (usually ``model.channel_graph()``).
        example_input: one input batch for the probe forward pass (a tuple is unpacked).

    A head is removed when its q, k and v rows are all dead.  If every channel of a
    producer is dead, one is kept (torch has no zero-channel convolution).  Removed units'
    constant outputs are folded into the consumers' biases, so the pruned model computes
    the same eval-mode outputs (up to float rounding).
    """
    check_graph(graph)
    dead = {name: _dead_mask(model, name, mask) for name, mask in dead_rows.items()}
    cuts = plan_removal(dead, graph)
    result = PruneResult(params_before=_num_params(model))
    consumers = tuple(dict.fromkeys(c for cut in cuts for c in cut.consumers))
    result.flops_before, inputs = _probe(model, example_input, consumers)
    if graph.exact_only:  # a traced graph: keep what cannot be folded exactly
        cuts = _keep_unfoldable(model, cuts, inputs)

    # Fold first, with every tensor still at its original shape.
    for cut in cuts:
        for name in cut.consumers:
            module = model.get_submodule(name)
            delta = _folded_bias(module, name, inputs[name], cut)
            if delta is not None and _add_to_bias(module, delta):
                result.new_parameters.append(f"{name}.bias")

    for cut in cuts:
        for name in cut.rows:
            _cut_rows(model, name, cut.kept_index, result)
        for name in cut.followers:
            _cut_follower(model, name, cut.n_units, cut.kept_index, result)
        for name in cut.consumers:
            _cut_columns(model, name, cut, result)
        if cut.head_size:
            result.removed_heads += len(cut.removed_index) // cut.head_size
        else:
            result.removed_channels[cut.source] = len(cut.removed_index)
    # kept covers parameters only (buffers such as running_mean need no optimizer state).
    params = dict(model.named_parameters())
    result.kept = {n: k for n, k in result.kept.items() if n in params}
    result.params_after = _num_params(model)
    result.flops_after = count_flops(model, example_input)
    return result
