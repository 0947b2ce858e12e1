"""rnnfast layers inside DistributedDataParallel.

A model of torch.nn recurrent layers converted with rnnfast.convert (LSTM: 2 layers,
bidirectional, proj_size, PackedSequence input with unsorted lengths; GRU: batch_first;
RNNCell unrolled; Linear head), wrapped in DistributedDataParallel on the gloo backend,
trained for two SGD steps by 2 processes (torch.multiprocessing.spawn, rendezvous through
a file:// store in tmp_path), each on half of the batch. The all-reduced gradients of both
ranks must equal those of one process over the whole batch, and the parameters after each
step must be identical on both ranks and equal to the single-process ones. float64, so the
only difference is the summation order of the all-reduce: tolerance 1e-10 (conftest).
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast

WORLD = 2
BATCH = 8  # 4 sequences per rank
T, I, H = 6, 5, 7
STEPS = 2


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=4)
        self.gru = nn.GRU(8, H, batch_first=True)
        self.cell = nn.RNNCell(H, H, nonlinearity="tanh")
        self.head = nn.Linear(H, 3)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, _ = self.lstm(packed)
        padded, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
        out, h = self.gru(padded)
        state = h[0]
        for t in range(2):
            state = self.cell(out[:, -1 - t], state)
        return self.head(state)


def build_model():
    """Same weights in every process (seeded), converted before DDP wraps it (the order the
    docs recommend: DDP registers hooks on the Parameters, which convert keeps)."""
    torch.manual_seed(0)
    model = Model().double()
    rnnfast.convert(model)
    assert type(model.lstm) is rnnfast.LSTM and type(model.cell) is rnnfast.RNNCell
    return model


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, BATCH, I, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (BATCH,), generator=g)
    lengths[0] = T
    target = torch.randn(STEPS, BATCH, 3, generator=g, dtype=torch.float64)
    return x, lengths, target


def train(model, x, lengths, target, rows):
    """STEPS of SGD on the sequences ``rows``; returns per step the gradients and the
    parameters after the step (by parameter name, without DDP's 'module.' prefix)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    history = []
    for step in range(STEPS):
        opt.zero_grad()
        pred = model(x[:, rows], lengths[rows])
        loss = ((pred - target[step, rows]) ** 2).mean()
        loss.backward()
        grads = {n.removeprefix("module."): p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        params = {n.removeprefix("module."): p.detach().clone()
                  for n, p in model.named_parameters()}
        history.append((grads, params))
    return history


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)  # two processes on a 2-core machine
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        model = nn.parallel.DistributedDataParallel(build_model())
        x, lengths, target = data()
        per = BATCH // WORLD
        rows = torch.arange(rank * per, (rank + 1) * per)
        history = train(model, x, lengths, target, rows)
        torch.save(history, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available in this build")
def test_ddp_two_processes_match_one_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    x, lengths, target = data()
    expected = train(build_model(), x, lengths, target, torch.arange(BATCH))
    assert len(expected) == STEPS
    for step in range(STEPS):
        exp_grads, exp_params = expected[step]
        for r, history in enumerate(ranks):
            grads, params = history[step]
            assert sorted(grads) == sorted(exp_grads)
            for name in exp_grads:
                torch.testing.assert_close(grads[name], exp_grads[name], atol=1e-10,
                                           rtol=1e-10, msg=f"rank {r} step {step} grad {name}")
                torch.testing.assert_close(params[name], exp_params[name], atol=1e-10,
                                           rtol=1e-10, msg=f"rank {r} step {step} {name}")
        # the ranks hold bit-identical parameters (DDP's all-reduce gives both the same sum)
        for name in exp_params:
            assert torch.equal(ranks[0][step][1][name], ranks[1][step][1][name]), name
    # every parameter got a non-zero gradient (no layer silently left out of the graph)
    assert all(g.abs().sum() > 0 for g in expected[0][0].values())
    # and the comparison is not vacuous: one rank's half batch alone gives other gradients
    half = train(build_model(), x, lengths, target, torch.arange(BATCH // WORLD))
    assert any(not torch.allclose(half[0][0][n], expected[0][0][n]) for n in expected[0][0])
