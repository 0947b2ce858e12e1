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
from . import _C
from ._C import build_info
from ._cuda import cuda_algorithm


def empty_cache() -> int:
    """Frees the memory rnnfast keeps between calls on the CPU and returns its size in bytes.

    The CPU step products pack each call's weights into panels for their micro-kernel; once a
    call is done, panels of up to 4 MiB stay allocated (8 MiB at most, process-wide) for the
    next call to reuse, since fresh pages cost a page fault each and a small call's panels
    would otherwise be faulted in again every call. Like ``torch.cuda.empty_cache()``, this
    gives that memory back; later calls keep panels again.
    """
    return int(_C._release_kept_panels())

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "convert", "build_info",
           "cuda_algorithm", "empty_cache",
           "functional", "ops", "onnx", "onnx_translation_table", "OnnxExportError",
           "quantization", "init", "StreamingState", "__version__"]
