"""rnnfast: drop-in torch.nn recurrent layers with fused CPU and CUDA kernels.

Use ``rnnfast.LSTM``, ``GRU``, ``RNN`` (and ``LSTMCell``, ``GRUCell``,
``RNNCell``) wherever you would use torch.nn's: same constructor, parameter names,
``state_dict``, inputs, outputs and gradients, with forward and
backpropagation-through-time run by hand-written fused kernels. Or convert an
existing model in place with ``rnnfast.convert(model)``.

``LSTM`` and ``GRU`` also take keyword-only options beyond torch.nn (``layer_norm``,
``zoneout``, ``recurrent_dropout``, ``weight_dropout``; ``LSTMCell``/``GRUCell``:
``layer_norm``), specified by :mod:`rnnfast.reference`.
"""
from ._version import __version__
from . import ops
from . import init
from . import functional
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .convert import convert
from .streaming import StreamingState
from . import quantization  # registers the layers with torch's dynamic quantization
from . import onnx  # registers the ONNX exporter's symbolic functions for rnnfast's operators
from .onnx import OnnxExportError, onnx_translation_table
from ._C import build_info
from ._cuda import cuda_algorithm

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "convert", "build_info",
           "cuda_algorithm",
           "functional", "ops", "onnx", "onnx_translation_table", "OnnxExportError",
           "quantization", "init", "StreamingState", "__version__"]
