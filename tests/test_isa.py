"""Every CPU kernel set (AVX-512, AVX2, baseline x86-64), not only the one this CPU
picks: each runs in a subprocess with RNNFAST_CPU_ISA set and is checked against
torch.nn for every cell type, forward and backward, in float32 and float64."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import rnnfast

SCRIPT = textwrap.dedent("""
    import torch, rnnfast
    from torch.nn.utils.rnn import pack_padded_sequence
    torch.manual_seed(0)
    want = {want!r}
    got = rnnfast.build_info()["cpu_kernels"]
    assert got == want, f"kernel set {{got}}, wanted {{want}}"
    cases = [(torch.nn.LSTM, rnnfast.LSTM, dict(proj_size=5)), (torch.nn.LSTM, rnnfast.LSTM, {{}}),
             (torch.nn.GRU, rnnfast.GRU, {{}}), (torch.nn.RNN, rnnfast.RNN, dict(nonlinearity="relu")),
             (torch.nn.RNN, rnnfast.RNN, dict(nonlinearity="tanh"))]
    tol = {{torch.float32: dict(atol=1e-5, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-8)}}
    for dtype in (torch.float32, torch.float64):
        for ref_cls, cls, kw in cases:
            ref = ref_cls(6, 37, num_layers=2, bidirectional=True, dtype=dtype, **kw)
            m = cls(6, 37, num_layers=2, bidirectional=True, dtype=dtype, **kw)
            m.load_state_dict(ref.state_dict())
            x = torch.randn(5, 4, 6, dtype=dtype, requires_grad=True)
            res = []
            for mod in (ref, m):
                out, state = mod(pack_padded_sequence(x, [5, 4, 2, 1]))
                states = state if isinstance(state, tuple) else (state,)
                tensors = (out.data, *states)
                gouts = [torch.linspace(-1, 1, t.numel(), dtype=dtype).reshape(t.shape)
                         for t in tensors]
                grads = torch.autograd.grad(tensors, [x, *mod.parameters()], gouts)
                res.append([*tensors, *grads])
            for a, b in zip(*res):
                torch.testing.assert_close(b, a, **tol[dtype])
    print("ok")
""")


def _supported() -> list[str]:
    with open("/proc/cpuinfo") as f:
        flags = next((line for line in f if line.startswith("flags")), "").split()
    isas = ["generic"]
    if {"avx2", "fma", "bmi2"} <= set(flags):
        isas.append("avx2")
    if {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= set(flags):
        isas.append("avx512")
    return isas


ALL = ["generic", "avx2", "avx512"]


@pytest.mark.parametrize("isa", ALL)
def test_kernel_set_matches_torch(isa):
    if isa not in _supported():
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    env = dict(os.environ, RNNFAST_CPU_ISA=isa)
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(want=isa)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


def test_unknown_kernel_set_is_a_clear_error():
    env = dict(os.environ, RNNFAST_CPU_ISA="sse9")
    code = "import torch, rnnfast; rnnfast.LSTM(3, 4)(torch.randn(2, 1, 3))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "RNNFAST_CPU_ISA must be one of avx512, avx2, generic; got 'sse9'" in proc.stderr


def test_this_cpu_uses_its_best_kernel_set():
    assert rnnfast.build_info()["cpu_kernels"] == _supported()[-1]


def test_no_isa_specific_code_runs_at_load():
    """The per-ISA kernel tables are built at compile time (constinit), so loading the
    library runs no AVX-512/AVX2 instruction: a static initializer in an isa_*.cpp file
    once made `import rnnfast` die with SIGILL on every CPU without AVX-512."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.fail("nm (binutils) is needed to inspect the extension's static initializers")
    so = rnnfast._C.__file__
    syms = subprocess.run([nm, so], capture_output=True, text=True, check=True).stdout
    inits = [line.split()[-1] for line in syms.splitlines() if "_GLOBAL__sub_I_isa_" in line]
    assert inits == [], f"static initializers in per-ISA code of {so}: {inits}"


# The GEMM kernels that only some kernel sets have (the AVX2 and AVX-512 sets' panel
# micro-kernels and blocked GEMMs): their own tests run in-process under the kernel set this CPU picks, and
# skip there when that set lacks them; here they run again under every other kernel set
# the CPU can run, so an AVX-512 machine tests the AVX2 kernels too.
@pytest.mark.parametrize("isa", ALL)
def test_gemm_kernels_under_every_kernel_set(isa):
    if isa not in _supported():
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    if isa == rnnfast.build_info()["cpu_kernels"]:
        pytest.skip(f"{isa} is this CPU's own kernel set: tests/test_blocked_gemm.py and "
                    "tests/test_step_gemm.py ran under it in this process")
    env = dict(os.environ, RNNFAST_CPU_ISA=isa)
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                           os.path.join(here, "test_blocked_gemm.py"),
                           os.path.join(here, "test_step_gemm.py")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
    if isa in ("avx2", "avx512"):  # the sets that have both kernels: nothing may skip
        assert "skipped" not in proc.stdout, proc.stdout[-2000:]


# The bfloat16 data path (the widened products, the rounding of the outputs and gate
# gradients, and the copies) under every other kernel set the CPU can run: the avx2 set
# rounds in integer arithmetic, as it does on a CPU without AVX512-BF16.
@pytest.mark.parametrize("isa", ALL)
def test_bfloat16_data_path_under_every_kernel_set(isa):
    if isa not in _supported():
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    if isa == rnnfast.build_info()["cpu_kernels"]:
        pytest.skip(f"{isa} is this CPU's own kernel set: tests/test_bfloat16_cpu.py ran under "
                    "it in this process")
    env = dict(os.environ, RNNFAST_CPU_ISA=isa)
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                           os.path.join(here, "test_bfloat16_cpu.py"), "-k",
                           "widened or fp32 or portable or without_a_bfloat16_kernel"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
    if isa != "generic":  # the sets with the panel micro-kernel run the widened path
        assert "widened kernel" not in proc.stdout, proc.stdout[-2000:]
