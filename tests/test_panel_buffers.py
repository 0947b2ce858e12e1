"""The forward step loops' packed-weight buffers, kept for the next forward to reuse
(csrc/cpu/blas.cpp PanelCache): a reused buffer holds whatever an earlier pack left in it,
so results must not depend on where a buffer came from; the buffers are freed when a
backward starts, so that a training step's peak memory does not include them; at most
16 MiB are held."""
from __future__ import annotations

import pytest
import torch

import rnnfast
from rnnfast import _C

CAP = 16 << 20


def _panel_kernel() -> bool:
    return rnnfast.build_info()["step_gemm"] == "rnnfast panel micro-kernel"


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    _C._release_panel_buffers()
    # Every loop split, whatever the load: a loop on one thread packs other sizes.
    _C._hold_step_loops_split(60.0)
    yield
    _C._reset_step_loop_load()
    _C._release_panel_buffers()
    torch.set_num_threads(old)


CASES = [("LSTM", {}), ("GRU", {}), ("RNN", {"nonlinearity": "tanh"}), ("RNN", {"nonlinearity": "relu"})]


@pytest.mark.parametrize("kind,kwargs", CASES, ids=["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_reused_buffers_give_the_same_bits(kind, kwargs, two_threads):
    """Odd sizes (panels with padding columns) after a layer of the same shape with huge
    weights has left its packs in the buffers: the same bits as with freshly allocated
    buffers, and torch.nn's results."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(45, 83, num_layers=2, bidirectional=True, **kwargs)
    m = getattr(rnnfast, kind)(45, 83, num_layers=2, bidirectional=True, **kwargs)
    m.load_state_dict(ref.state_dict())
    big = getattr(rnnfast, kind)(45, 83, num_layers=2, bidirectional=True, **kwargs)
    with torch.no_grad():
        for p in big.parameters():
            p.fill_(1e30)
    x = torch.randn(40, 5, 45)
    with torch.no_grad():
        _C._release_panel_buffers()
        fresh = m(x)
        big(x)
        held = _C._held_panel_buffer_bytes()
        reused = m(x)
        # Every pack took a held buffer of its own size and gave it back: nothing was added.
        held_after = _C._held_panel_buffer_bytes()
        expected = ref(x)
    if _panel_kernel():
        assert held > 0, "the forward released no panel buffers for reuse"
        assert held_after == held, "the packs did not reuse the held buffers"
    else:
        assert held == 0
    for a, b in zip(torch.utils._pytree.tree_leaves(fresh), torch.utils._pytree.tree_leaves(reused)):
        assert torch.equal(a, b)
    for a, b in zip(torch.utils._pytree.tree_leaves(expected), torch.utils._pytree.tree_leaves(reused)):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_backward_frees_the_held_buffers(two_threads):
    torch.manual_seed(0)
    m = rnnfast.LSTM(64, 200)
    x = torch.randn(30, 4, 64, requires_grad=True)
    with torch.no_grad():
        m(x)
    if _panel_kernel():
        assert _C._held_panel_buffer_bytes() > 0
    out, _ = m(x)
    out.sum().backward()
    assert _C._held_panel_buffer_bytes() == 0


def test_at_most_16_mib_are_held(two_threads):
    torch.manual_seed(0)
    sizes = (300, 400, 500, 600)
    with torch.no_grad():
        for H in sizes:
            rnnfast.LSTM(H, H)(torch.randn(20, 3, H))
            assert _C._held_panel_buffer_bytes() <= CAP
    if _panel_kernel():
        # The last layer's four packs (W_hh and W_ih of each thread, 2.9 MiB each) are held.
        assert _C._held_panel_buffer_bytes() >= 4 * 4 * 600 * 1200
