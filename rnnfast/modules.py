"""Drop-in replacements for torch.nn's recurrent layers.

``rnnfast.LSTM`` has exactly ``torch.nn.LSTM``'s constructor, parameter names,
``state_dict``, forward signature, return structure and error messages; its
forward and backward run rnnfast's fused kernels (one operator call per layer and
direction, hand-written BPTT).

The classes derive from ``torch.nn.RNNBase`` (which owns the parameter layout),
not from ``torch.nn.LSTM``: ``torch.compile`` refuses to trace subclasses of
``nn.LSTM``/``nn.GRU``/``nn.RNN``, and rnnfast layers must compile with
``fullgraph=True``. The few LSTM-specific helpers (state-shape checks, state
permutation for unsorted packed batches) are torch.nn.LSTM's own functions, so the
checks and messages are the same by construction.
"""
from __future__ import annotations

from typing import Optional, Union, overload

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import functional

__all__ = ["LSTM"]

_KERNEL_DTYPES = (torch.float32, torch.float64)


class LSTM(nn.RNNBase):
    r"""Multi-layer LSTM, a drop-in replacement for :class:`torch.nn.LSTM`.

    Args:
        input_size: features of the input x.
        hidden_size: features of the hidden state h (and cell state c).
        num_layers: number of stacked layers. Default: 1.
        bias: use ``b_ih`` and ``b_hh``. Default: True.
        batch_first: input and output are (B, T, *) instead of (T, B, *). Default: False.
        dropout: dropout on the outputs of each layer but the last, in training
            mode. Default: 0.
        bidirectional: add a reverse-direction LSTM per layer. Default: False.
        proj_size: if > 0, project h to this size (``weight_hr_l{k}``). Default: 0.
        device, dtype: factory keyword arguments for the parameters.

    Inputs: ``input, (h_0, c_0)`` exactly as torch.nn.LSTM: ``input`` is (T, B, I),
    (B, T, I) with ``batch_first``, unbatched (T, I), or a
    :class:`~torch.nn.utils.rnn.PackedSequence`; ``(h_0, c_0)`` is optional.

    Outputs: ``output, (h_n, c_n)`` exactly as torch.nn.LSTM.

    float32 and float64 run rnnfast's kernels; other dtypes (float16/bfloat16 on
    the CPU) fall back to torch's own implementation.

    Example::

        >>> m = rnnfast.LSTM(10, 20, num_layers=2)
        >>> m.load_state_dict(torch.nn.LSTM(10, 20, num_layers=2).state_dict())
        >>> out, (h, c) = m(torch.randn(5, 3, 10))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers=num_layers, bias=bias,
                         batch_first=batch_first, dropout=dropout, bidirectional=bidirectional,
                         proj_size=proj_size, device=device, dtype=dtype)

    # torch.nn.LSTM's own checks and state permutation (same messages by construction).
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args  # type: ignore[assignment]
    permute_hidden = nn.LSTM.permute_hidden  # type: ignore[assignment]

    def _layer_params(self) -> list[functional.LayerParams]:
        params = []
        for names in self._all_weights:
            w = {name.split("_l")[0]: getattr(self, name) for name in names}
            params.append((w["weight_ih"], w["weight_hh"], w.get("bias_ih"), w.get("bias_hh"),
                           w.get("weight_hr")))
        return params

    @overload
    def forward(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]: ...

    @overload
    def forward(self, input: PackedSequence, hx: Optional[tuple[Tensor, Tensor]] = None
                ) -> tuple[PackedSequence, tuple[Tensor, Tensor]]: ...

    def forward(self, input: Union[Tensor, PackedSequence],
                hx: Optional[tuple[Tensor, Tensor]] = None):
        """Run the LSTM; same inputs, outputs and errors as :meth:`torch.nn.LSTM.forward`."""
        orig_input = input
        batch_sizes = None
        num_directions = 2 if self.bidirectional else 1
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        is_batched = True
        batch_dim = 0 if self.batch_first else 1
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = orig_input
            max_batch_size = int(batch_sizes[0]) if batch_sizes.numel() > 0 else 0
            if hx is None:
                hx = self._zero_state(input, max_batch_size, real_hidden_size)
            else:
                self._check_packed_state(input, hx, batch_sizes)
                hx = self.permute_hidden(hx, sorted_indices)
        else:
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
            is_batched = input.dim() == 3
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            max_batch_size = input.size(0) if self.batch_first else input.size(1)
            if input.size(1 if self.batch_first else 0) == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
            sorted_indices = None
            unsorted_indices = None
            if hx is None:
                hx = self._zero_state(input, max_batch_size, real_hidden_size)
                self.check_forward_args(input, hx, batch_sizes)
            else:
                if is_batched:
                    if hx[0].dim() != 3 or hx[1].dim() != 3:
                        raise RuntimeError(
                            "For batched 3-D input, hx and cx should also be 3-D but got "
                            f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
                else:
                    if hx[0].dim() != 2 or hx[1].dim() != 2:
                        raise RuntimeError(
                            "For unbatched 2-D input, hx and cx should also be 2-D but got "
                            f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
                self.check_forward_args(input, hx, batch_sizes)
                hx = self.permute_hidden(hx, sorted_indices)

        h0, c0 = hx
        self._check_state(input, h0, c0)
        if input.dtype in _KERNEL_DTYPES:
            if batch_sizes is None and self.batch_first:
                input = input.transpose(0, 1)
            output, h_n, c_n = functional.lstm(
                input, h0, c0, self._layer_params(), self.num_layers, self.bidirectional,
                self.dropout, self.training, batch_sizes)
            if batch_sizes is None and self.batch_first:
                output = output.transpose(0, 1)
        else:
            output, h_n, c_n = self._torch_fallback(input, (h0, c0), batch_sizes)

        if isinstance(orig_input, PackedSequence):
            output_packed = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            return output_packed, self.permute_hidden((h_n, c_n), unsorted_indices)
        if not is_batched:
            output = output.squeeze(batch_dim)
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return output, self.permute_hidden((h_n, c_n), unsorted_indices)

    def _zero_state(self, input: Tensor, batch: int, real_hidden_size: int
                    ) -> tuple[Tensor, Tensor]:
        layers = self.num_layers * (2 if self.bidirectional else 1)
        h = torch.zeros(layers, batch, real_hidden_size, dtype=input.dtype, device=input.device)
        c = torch.zeros(layers, batch, self.hidden_size, dtype=input.dtype, device=input.device)
        return h, c

    def _check_packed_state(self, input: Tensor, hx: tuple[Tensor, Tensor],
                            batch_sizes: Tensor) -> None:
        if not torch.compiler.is_compiling():
            self.check_forward_args(input, hx, batch_sizes)
            return
        # Compiling: the batch size of a PackedSequence is data (batch_sizes[0]),
        # unknown at trace time, so check it with a runtime assertion instead of a
        # Python comparison that would have to guard on it.
        self.check_input(input, batch_sizes)
        layers = self.num_layers * (2 if self.bidirectional else 1)
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        mini_batch = int(batch_sizes[0])
        for i, (t, size) in enumerate(((hx[0], real_hidden_size), (hx[1], self.hidden_size))):
            if t.dim() != 3 or t.size(0) != layers or t.size(2) != size:
                raise RuntimeError(f"Expected hidden[{i}] size ({layers}, batch, {size}), "
                                   f"got {list(t.size())}")
            torch._check(t.size(1) == mini_batch, lambda: "Expected the batch size of hidden "
                         "states to equal the PackedSequence's batch size (batch_sizes[0])")

    def _check_state(self, input: Tensor, h0: Tensor, c0: Tensor) -> None:
        # torch.nn.LSTM lets its C++ kernel reject states of another dtype or device;
        # rnnfast checks here, with torch's wording.
        for name, t in (("hx", h0), ("cx", c0)):
            if t.dtype != input.dtype:
                raise RuntimeError(
                    f"Input and hidden tensors are not the same dtype, found input tensor with "
                    f"{input.dtype} and hidden tensor with {t.dtype}")
            if t.device != input.device:
                raise RuntimeError(
                    f"Input and hidden tensors are not at the same device, found input tensor "
                    f"at {input.device} and hidden tensor at {t.device}")

    def _torch_fallback(self, input: Tensor, hx: tuple[Tensor, Tensor],
                        batch_sizes: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        weights = [getattr(self, name) for name in self._flat_weights_names]
        if batch_sizes is None:
            result = torch._VF.lstm(input, hx, weights, self.bias, self.num_layers,
                                    self.dropout, self.training, self.bidirectional,
                                    self.batch_first)
        else:
            result = torch._VF.lstm(input, batch_sizes, hx, weights, self.bias, self.num_layers,
                                    self.dropout, self.training, self.bidirectional)
        return result[0], result[1], result[2]
