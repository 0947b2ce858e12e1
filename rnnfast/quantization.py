"""Dynamic quantization of rnnfast's layers with ``torch.ao.quantization.quantize_dynamic``.

rnnfast does not quantize anything itself: a quantized rnnfast layer *is* torch's dynamic
quantized module (``torch.ao.nn.quantized.dynamic.LSTM``, ``GRU``, ``LSTMCell``,
``GRUCell``, ``RNNCell``), built by torch's own ``from_float`` from the torch.nn module
with the same weights, so its outputs are bitwise those of the quantized torch.nn model::

    model = rnnfast.convert(model)          # train with rnnfast ...
    qmodel = torch.ao.quantization.quantize_dynamic(model, {nn.LSTM, nn.GRU, nn.Linear})

A spec may name torch.nn's classes (as above), rnnfast's (``{rnnfast.LSTM, ...}``), or be
left out (torch's default spec, which names torch.nn's classes). Two pieces make this
work, both installed when ``rnnfast`` is imported:

* **Mapping.** rnnfast's classes are added to torch's default dynamic-quantization
  mapping (``torch.ao.quantization.quantization_mappings
  .DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS``, the dict ``quantize_dynamic`` reads when no
  ``mapping`` is passed). Each maps to a small class whose ``from_float`` builds the
  torch.nn twin (sharing the ``Parameter`` objects) and returns torch's ``from_float`` of
  it: torch's checks, errors and numbers by construction. A ``mapping=`` passed by the
  user replaces torch's default and so must list rnnfast's classes itself
  (:data:`DYNAMIC_QUANT_MODULE_MAPPINGS`).
* **Spec by torch.nn class.** ``quantize_dynamic`` matches its spec against
  ``type(module)`` exactly, which for a converted layer is rnnfast's class. rnnfast's
  layers and cells therefore have a class attribute ``qconfig`` (a descriptor, present
  only while ``quantize_dynamic`` propagates its spec: everywhere else the attribute does
  not exist until torch sets it) that answers torch's propagation step for the module as
  that step would answer for the torch.nn class it replaces: the spec's entry for the
  module's name, else for rnnfast's class, else for torch.nn's class, else the parent's.
  It reads the propagation step's arguments from its frame (the step is identified by its
  code object, so nothing else is ever read); it patches nothing in torch. Other users of
  qconfig propagation (static ``prepare``, QAT) see rnnfast's modules as before.

Plain ``RNN``: torch has no dynamic quantized ``nn.RNN`` (it is not in torch's mapping, so
``quantize_dynamic(model, {nn.RNN})`` leaves a torch.nn.RNN in float without a word), and
rnnfast mirrors that: an ``rnnfast.RNN`` stays in float too. ``RNNCell`` is quantized, as
torch's is. Layers without bias get what torch's ``from_float`` gives the torch.nn module (an
``AssertionError``). An LSTM with ``proj_size`` is refused with a ``RuntimeError`` that says
to leave it in float: torch's dynamic quantized LSTM has no projection, and torch.nn's
such LSTM quantizes to a module that fails when run. A layer or cell with options beyond
torch.nn (``layer_norm``, ``zoneout``, ``recurrent_dropout``, ``weight_dropout``) has no
torch.nn twin: :func:`to_torch`, and so quantizing it, is refused with a
``NotImplementedError`` naming the options.
"""
from __future__ import annotations

import importlib
import inspect
import sys
import warnings
from typing import Any, Optional

import torch
from torch import nn

from . import modules

# torch's dynamic quantization: if this torch lacks one of these modules, rnnfast still
# imports, and quantizing its layers is not supported (DYNAMIC_QUANT_MODULE_MAPPINGS is
# empty).
try:
    from torch.ao.nn.quantized import dynamic as nnqd
    from torch.ao.quantization import quantization_mappings as _mappings

    # The module, not the function of the same name that torch.ao.quantization exports.
    _quantize = importlib.import_module("torch.ao.quantization.quantize")
except ImportError:
    nnqd = _mappings = _quantize = None

__all__ = ["to_torch", "DYNAMIC_QUANT_MODULE_MAPPINGS"]

#: rnnfast class -> the torch.nn class it replaces.
TORCH_CLASSES: dict[type, type] = {
    modules.LSTM: nn.LSTM,
    modules.GRU: nn.GRU,
    modules.RNN: nn.RNN,
    modules.LSTMCell: nn.LSTMCell,
    modules.GRUCell: nn.GRUCell,
    modules.RNNCell: nn.RNNCell,
}


def to_torch(module: nn.Module) -> nn.Module:
    """The torch.nn twin of an rnnfast layer or cell: same class options, the very same
    ``Parameter`` objects (nothing is copied), same train/eval mode, and the module's
    ``qconfig`` if it has one.

    Args:
        module: an ``rnnfast.LSTM``/``GRU``/``RNN``/``LSTMCell``/``GRUCell``/``RNNCell``.

    Returns:
        The ``torch.nn`` module of the same kind.

    Raises:
        NotImplementedError: the module uses options torch.nn does not have
            (``layer_norm``, ``zoneout``, ``recurrent_dropout``, ``weight_dropout``).
    """
    cls = TORCH_CLASSES.get(type(module))
    if cls is None:
        raise TypeError(f"to_torch expects an rnnfast layer or cell, got {type(module)}")
    if module._options():
        raise NotImplementedError(
            f"{module._describe_options()} has no torch.nn equivalent: torch.nn.{cls.__name__} "
            f"has no {' or '.join(module._options())}, so it cannot be converted to torch.nn "
            "nor dynamically quantized (torch.ao.quantization.quantize_dynamic). Leave this "
            "layer in float: name it out of the quantize_dynamic spec (e.g. a set of module "
            "names, or a qconfig of None for it).")
    if isinstance(module, nn.RNNBase):
        kwargs: dict[str, Any] = dict(
            input_size=module.input_size, hidden_size=module.hidden_size,
            num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
            dropout=module.dropout, bidirectional=module.bidirectional)
        if cls is nn.LSTM:
            kwargs["proj_size"] = module.proj_size
    else:
        kwargs = dict(input_size=module.input_size, hidden_size=module.hidden_size,
                      bias=module.bias)
    if cls in (nn.RNN, nn.RNNCell):
        kwargs["nonlinearity"] = module.nonlinearity
    params = list(module.parameters(recurse=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # dropout with one layer: warned once
        twin = cls(**kwargs, device=torch.device("meta"),
                   dtype=params[0].dtype if params else None)
    for name, value in module.named_parameters(recurse=False):
        setattr(twin, name, value)
    if isinstance(twin, nn.RNNBase):
        twin._init_flat_weights()
    twin.train(module.training)
    if "qconfig" in module.__dict__:
        twin.qconfig = module.__dict__["qconfig"]
    return twin


class _TorchDynamicQuantized:
    """A target of torch's dynamic-quantization mapping for one rnnfast class:
    ``from_float`` returns torch's dynamic quantized module of the torch.nn twin."""

    _FLOAT_MODULE: type
    _TORCH_QUANTIZED: type

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> nn.Module:
        """Quantize ``mod`` exactly as torch quantizes the torch.nn module with its weights."""
        if type(mod) is not cls._FLOAT_MODULE:
            raise AssertionError(f"{cls.__name__}.from_float only works for "
                                 f"{cls._FLOAT_MODULE.__module__}.{cls._FLOAT_MODULE.__name__}")
        if getattr(mod, "proj_size", 0) > 0:
            raise RuntimeError(
                "Dynamic quantization of an LSTM with proj_size > 0 is not supported: torch's "
                "dynamic quantized LSTM has no projection (torch.nn's such LSTM quantizes to a "
                "module that fails when run). Leave this layer in float: name it out of the "
                "quantize_dynamic spec (e.g. a set of module names, or a qconfig of None for it).")
        return cls._TORCH_QUANTIZED.from_float(
            to_torch(mod), use_precomputed_fake_quant=use_precomputed_fake_quant)


def _target(rnnfast_cls: type, torch_quantized: type) -> type:
    return type(f"DynamicQuantized{rnnfast_cls.__name__}", (_TorchDynamicQuantized,),
                {"_FLOAT_MODULE": rnnfast_cls, "_TORCH_QUANTIZED": torch_quantized,
                 "__module__": __name__,
                 "__doc__": f"Maps rnnfast.{rnnfast_cls.__name__} to torch's "
                            f"{torch_quantized.__module__}.{torch_quantized.__name__}."})


#: What rnnfast adds to torch's default dynamic-quantization mapping (rnnfast class ->
#: mapping target). No ``RNN``: torch has no dynamic quantized ``nn.RNN`` either. Merge it
#: into a ``mapping=`` of your own.
DYNAMIC_QUANT_MODULE_MAPPINGS: dict[type, type] = {} if nnqd is None else {
    cls: _target(cls, getattr(nnqd, cls.__name__)) for cls in (
        modules.LSTM, modules.GRU, modules.LSTMCell, modules.GRUCell, modules.RNNCell)
}

def _code_objects() -> tuple[Any, Any]:
    """The code objects of torch's qconfig propagation step and of quantize_dynamic (under
    its deprecation wrapper): the descriptor answers only a propagation step that
    quantize_dynamic runs. ``(None, None)`` if this torch has no such functions."""
    try:
        return (_quantize._propagate_qconfig_helper.__code__,
                inspect.unwrap(_quantize.quantize_dynamic).__code__)
    except AttributeError:
        return None, None


_PROPAGATE_STEP, _QUANTIZE_DYNAMIC = _code_objects()
_warned_no_step = False


def _quantize_dynamic_runs(frame: Any) -> bool:
    while frame is not None:
        if frame.f_code is _QUANTIZE_DYNAMIC:
            return True
        frame = frame.f_back
    return False


def _warn_no_step() -> None:
    global _warned_no_step
    if not _warned_no_step:
        _warned_no_step = True
        warnings.warn(
            "rnnfast: torch's qconfig propagation step "
            "(torch.ao.quantization.quantize._propagate_qconfig_helper) or quantize_dynamic "
            "was not found in this torch, so a quantize_dynamic spec naming torch.nn's "
            "classes (nn.LSTM, ...) does not reach rnnfast's layers and cells, which then "
            "stay in float. Name rnnfast's classes in the spec (e.g. {rnnfast.LSTM}) or "
            "their module names instead.", UserWarning, stacklevel=3)


class _QConfigBySpec:
    """The ``qconfig`` class attribute of rnnfast's layers and cells: see the module
    docstring. A non-data descriptor, so a ``qconfig`` set on the instance (by torch or by
    the user) always wins; outside ``quantize_dynamic``'s propagation the attribute does
    not exist."""

    def __get__(self, obj: Optional[nn.Module], objtype: Optional[type] = None) -> Any:
        if obj is None:
            return self
        if _PROPAGATE_STEP is None:
            _warn_no_step()
            raise AttributeError("qconfig")
        frame = sys._getframe(1)
        if frame.f_code is not _PROPAGATE_STEP or not _quantize_dynamic_runs(frame.f_back):
            raise AttributeError("qconfig")
        torch_class = TORCH_CLASSES.get(type(obj))
        if torch_class is None:  # a subclass: matched by its own type only, as in torch
            raise AttributeError("qconfig")
        step = frame.f_locals
        try:
            spec, prefix = step["qconfig_dict"], step["prefix"]
            parent = step["qconfig_parent"]
        except KeyError:  # the step's arguments were renamed: as if the step were unknown
            _warn_no_step()
            raise AttributeError("qconfig") from None
        qconfig = spec.get(torch_class, parent)
        qconfig = spec.get(type(obj), qconfig)
        return spec.get(prefix, qconfig)


def _install() -> None:
    """Register rnnfast's classes with torch's dynamic quantization (idempotent)."""
    if _mappings is not None:
        _mappings.DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS.update(DYNAMIC_QUANT_MODULE_MAPPINGS)
    for cls in TORCH_CLASSES:
        cls.qconfig = _QConfigBySpec()


_install()
