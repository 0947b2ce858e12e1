"""rnnfast: drop-in torch.nn recurrent layers with fused CPU and CUDA kernels.

Use ``rnnfast.LSTM`` wherever you would use ``torch.nn.LSTM``: same constructor,
parameter names, ``state_dict``, inputs, outputs and gradients, with forward and
backpropagation-through-time run by hand-written fused kernels.
"""
from ._version import __version__
from . import ops
from . import functional
from .modules import LSTM
from ._C import build_info

__all__ = ["LSTM", "build_info", "functional", "ops", "__version__"]
