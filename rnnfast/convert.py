"""``rnnfast.convert(model)``: swap torch.nn recurrent layers for rnnfast's in place."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from . import modules

__all__ = ["convert"]

# torch.nn class -> rnnfast class. Exact types only: a subclass may have its own
# forward (or other behaviour) that rnnfast cannot reproduce.
_REPLACEMENTS: dict[type, type] = {
    nn.LSTM: modules.LSTM,
    nn.GRU: modules.GRU,
    nn.RNN: modules.RNN,
    nn.LSTMCell: modules.LSTMCell,
    nn.GRUCell: modules.GRUCell,
    nn.RNNCell: modules.RNNCell,
}
_TORCH_BASES = tuple(_REPLACEMENTS)

_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
               "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
               "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


def _constructor_args(m: nn.Module) -> tuple[type, dict]:
    if isinstance(m, nn.RNNBase):
        kwargs = dict(input_size=m.input_size, hidden_size=m.hidden_size,
                      num_layers=m.num_layers, bias=m.bias, batch_first=m.batch_first,
                      dropout=m.dropout, bidirectional=m.bidirectional)
        if isinstance(m, nn.LSTM):
            kwargs["proj_size"] = m.proj_size
        if isinstance(m, nn.RNN):
            kwargs["nonlinearity"] = m.nonlinearity
    else:
        kwargs = dict(input_size=m.input_size, hidden_size=m.hidden_size, bias=m.bias)
        if isinstance(m, nn.RNNCell):
            kwargs["nonlinearity"] = m.nonlinearity
    return _REPLACEMENTS[type(m)], kwargs


def _replacement(m: nn.Module) -> nn.Module:
    cls, kwargs = _constructor_args(m)
    params = list(m.parameters())
    dtype = params[0].dtype if params else None
    with warnings.catch_warnings():
        # torch's "dropout expects num_layers > 1" warning was already given once.
        warnings.simplefilter("ignore", UserWarning)
        new = cls(**kwargs, device=torch.device("meta"), dtype=dtype)
    # Reuse the very Parameter objects: optimisers, weight tying and hooks that hold
    # them keep working, and no memory is copied.
    for name, value in m.named_parameters(recurse=False):
        setattr(new, name, value)
    for name, buf in m.named_buffers(recurse=False):
        new.register_buffer(name, buf)
    if isinstance(new, nn.RNNBase):
        new._init_flat_weights()
    # Hooks registered on the original keep firing (the very same dicts, so the
    # handles the user holds can still remove them).
    for attr in _HOOK_DICTS:
        if hasattr(m, attr):
            object.__setattr__(new, attr, getattr(m, attr))
    new.train(m.training)
    return new


def convert(model: nn.Module, *, warn: bool = True) -> nn.Module:
    """Replace every torch.nn LSTM/GRU/RNN and LSTMCell/GRUCell/RNNCell inside
    ``model`` (however deeply nested, including ``model`` itself) by the rnnfast
    equivalent, in place, and return the model.

    The replacement shares the original's ``Parameter`` objects (so an optimiser
    created before ``convert`` keeps training them) and its hooks, and keeps its
    device, dtype, train/eval mode and every constructor option; outputs are
    unchanged.
    Subclasses of those torch.nn classes are left alone (their own ``forward`` may
    differ); with ``warn=True`` a ``UserWarning`` names them.

    Args:
        model: any ``nn.Module``.
        warn: warn about the modules that were left alone.

    Returns:
        ``model`` (or the replacement when ``model`` itself is one of the classes).
    """
    if type(model) in _REPLACEMENTS:
        return _replacement(model)
    skipped: list[str] = []
    if isinstance(model, _TORCH_BASES):
        skipped.append(f"the model itself ({type(model).__module__}.{type(model).__qualname__})")
    targets = []
    for parent_name, parent in model.named_modules():
        for child_name, child in parent.named_children():
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if type(child) in _REPLACEMENTS:
                targets.append((parent, child_name))
            elif isinstance(child, _TORCH_BASES):
                skipped.append(f"{full} ({type(child).__module__}.{type(child).__qualname__})")
    replaced: dict[int, nn.Module] = {}  # a module shared by several parents is converted once
    for parent, child_name in targets:
        child = getattr(parent, child_name)
        if id(child) not in replaced:
            replaced[id(child)] = _replacement(child)
        setattr(parent, child_name, replaced[id(child)])
    if skipped and warn:
        warnings.warn("rnnfast.convert left these modules alone (subclasses of torch.nn "
                      "recurrent layers, whose behaviour rnnfast cannot vouch for): "
                      + ", ".join(skipped), UserWarning, stacklevel=2)
    return model
