"""CPU peak memory of one training step, torch.nn vs rnnfast, each measured in a fresh subprocess
(``python -m bench --memory``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .check import make_pair
from .grid import LayerSpec, Shape, available_layers, get_layer, resolve_shapes
from .util import first_lines

__all__ = ["MEMORY_IMPLS", "MemoryResult", "measure_step_memory", "measure_memory", "child_main"]

# CPU peak memory of one training step (each measurement in a fresh subprocess).
# --------------------------------------------------------------------------------------------
#
# Why a subprocess, and what is measured.  The CPU has no allocator peak counter like
# ``torch.cuda.max_memory_allocated`` (torch's CPU allocator does not cache and keeps no
# statistics by default), so the peak is taken from the kernel: the resident set size (RSS)
# and its high-water mark ``VmHWM`` in ``/proc/self/status``.  Those count the whole process,
# so every (layer, implementation, shape) is measured in its own fresh interpreter
# (running :func:`child_main`, see :func:`measure_step_memory`), where nothing of another
# implementation or shape is resident:
#
# 1. setup: ``torch.set_num_threads(threads)`` (2, as in the timing runs), build the layer and
#    the input with :func:`make_pair` (float32, or bfloat16 with ``--dtypes bfloat16``: both
#    layers and the input in that dtype; weights identical to torch.nn's), the input
#    requiring grad as in ``train`` mode, and a fixed upstream gradient ``ones(T, B, H)``;
#    drop the other implementation's layer, ``gc.collect()``, ``malloc_trim(0)`` (free heap
#    memory goes back to the kernel, so it cannot silently absorb the step's allocations);
# 2. ``rss_before`` = RSS from ``/proc/self/statm``; then the high-water mark is reset to the
#    current RSS by writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0; checked at run
#    time: after the write ``VmHWM`` must equal ``VmRSS``);
# 3. exactly one training step: ``out = layer(x)[0]; out.backward(gout)`` (parameter and input
#    gradients are allocated inside the step, identically for both implementations);
# 4. ``peak`` = ``VmHWM``; the step's extra peak memory is ``peak - rss_before``.
#
# The first step of a fresh process (``cold``) also pays one-time costs: code pages of the
# kernels faulted in, oneDNN primitive creation and its caches, thread-pool start.  So the child
# then frees the step's tensors (grads set to None), trims, resets the mark again and measures a
# second, identical step (``warm``): the steady-state cost of a step in a training loop.  Both
# are reported; a warm-up before the first measurement would hide the one-time costs, which is
# why the cold step is measured first and without one.
#
# If clear_refs cannot reset the mark (old kernel, restricted /proc), the child falls back to
# ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux, the whole life of the process):
# then the cold figure is ``max(0, ru_maxrss - rss_before)``, which is right only as long as
# nothing during setup (imports, building the layers) peaked above ``rss_before`` plus the step's
# peak, and the warm figure is not available.  ``method`` in the result says which was used.
#
# Allocator settings (set in the child's environment unless already set by the caller):
# ``MALLOC_ARENA_MAX=2`` (one malloc arena per compute thread, as threads=2; bounds arena slack)
# and ``MALLOC_MMAP_THRESHOLD_=131072``: glibc's default threshold is *dynamic* (it rises up to
# 32 MiB after a large block is freed), so depending on what setup happened to free, a large
# buffer of the step would come either from fresh mmap'ed pages (counted) or from already-resident
# heap (not counted).  A fixed threshold sends every block >= 128 KiB to mmap and back to the
# kernel on free, so RSS follows the live large buffers, like CUDA's allocated-bytes counter.
# torch's own settings (oneDNN for nn.LSTM on the CPU, ATen for GRU/RNN) are left at defaults.
#
# Noise: RSS counts touched 4 KiB pages, including file-backed code pages faulted in during the
# step and small-object heap growth, and the kernel's RSS counters are per-CPU approximations
# (~0.2 MiB).  Repeated runs of one cell agree to within ~0.3 MiB (``--memory-repeat 3`` on
# RNN/GRU L: 57.3-57.6 / 227.9-228.0 MiB), which matters only for the smallest shapes (B1).
# With glibc's default (dynamic) mmap threshold the figures move by a few MiB and vary more
# between runs (LSTM M rnnfast: 114.5-115.8 MiB instead of 112.6), torch.nn's barely.

#: Implementations a memory measurement can run: the torch.nn baseline and rnnfast.
MEMORY_IMPLS: Tuple[str, ...] = ("torch", "rnnfast")

_MEMORY_ENV_DEFAULTS: Dict[str, str] = {
    "MALLOC_ARENA_MAX": "2",
    "MALLOC_MMAP_THRESHOLD_": "131072",
}


def _proc_status_kib(field_name: str) -> Optional[int]:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for ln in f:
                if ln.startswith(field_name + ":"):
                    return int(ln.split()[1])
    except OSError:
        return None
    return None


def _rss_bytes() -> int:
    """Current RSS from ``/proc/self/statm`` (resident pages × page size)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        resident = int(f.read().split()[1])
    return resident * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; True if that worked."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    hwm, rss = _proc_status_kib("VmHWM"), _proc_status_kib("VmRSS")
    # The kernel's RSS counters are per-CPU approximations and other threads run: the two reads
    # differ by up to ~200 KiB here. A reset that did not happen leaves the setup's peak, MiBs above.
    return hwm is not None and rss is not None and hwm <= rss + 1024


def _malloc_trim() -> None:
    try:
        import ctypes  # noqa: PLC0415

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _settle() -> None:
    import gc  # noqa: PLC0415

    gc.collect()
    _malloc_trim()


def _memory_child(layer: str, impl: str, T: int, B: int, H: int, seed: int = 0, threads: int = 2,
                  extra_bytes: int = 0, dtype: str = "float32") -> Dict[str, Any]:
    """Runs in the fresh child: measures one cold and one warm training step (see above).

    ``extra_bytes`` (for the tests) allocates and fills that many more bytes inside each step,
    kept alive until the backward is done, to show that the method sees memory.
    """
    import resource  # noqa: PLC0415

    if threads > 0:
        torch.set_num_threads(threads)
    spec = get_layer(layer)
    if impl not in MEMORY_IMPLS:
        raise ValueError(f"unknown implementation {impl!r}; use {MEMORY_IMPLS}")
    shape = Shape(f"T{T}B{B}H{H}", T, B, H)
    dt = getattr(torch, dtype)
    ref, fast, x = make_pair(spec, shape, "train", "cpu", dt, seed)
    mod = ref if impl == "torch" else fast
    del ref, fast
    gout = torch.ones(T, B, H, dtype=dt)

    def step() -> None:
        extra = torch.ones(max(0, extra_bytes) // 4) if extra_bytes > 0 else None
        out = mod(x)[0]
        out.backward(gout)
        del out, extra

    def clear() -> None:
        mod.zero_grad(set_to_none=True)
        x.grad = None

    res: Dict[str, Any] = {"layer": spec.name, "impl": impl, "T": T, "B": B, "H": H, "dtype": dtype,
                           "threads": torch.get_num_threads(),
                           "env": {k: os.environ.get(k) for k in _MEMORY_ENV_DEFAULTS}}
    # Bootstrap: one step of the same layer on a tiny input (T=2, B=1), so that what every first
    # call of a process pays whatever the shape (kernel code paged in, the OpenMP pool's thread
    # stacks, autograd's first-use state: ~40 MiB here) is not charged to the measured step.
    # It allocates next to nothing of the measured shape's buffers.
    _settle()
    before0 = _rss_bytes()
    if _reset_peak_rss():
        xb = torch.randn(2, 1, shape.I, dtype=dt, requires_grad=True)
        ob = mod(xb)[0]
        ob.backward(torch.ones_like(ob))
        res["bootstrap_bytes"] = _proc_status_kib("VmHWM") * 1024 - before0
        del xb, ob
        mod.zero_grad(set_to_none=True)
    _settle()
    before = _rss_bytes()
    can_reset = _reset_peak_rss()
    step()
    if can_reset:
        res["method"] = "VmHWM after clear_refs"
        res["cold_bytes"] = _proc_status_kib("VmHWM") * 1024 - before
    else:
        res["method"] = "ru_maxrss (clear_refs unavailable)"
        res["cold_bytes"] = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
    res["rss_before_bytes"] = before
    res["warm_bytes"] = None
    clear()
    _settle()
    if can_reset:
        before2 = _rss_bytes()
        if _reset_peak_rss():
            step()
            res["warm_bytes"] = _proc_status_kib("VmHWM") * 1024 - before2
    return res


@dataclass
class MemoryResult:
    """Peak extra memory of one training step, torch.nn vs rnnfast, for one (layer, shape).

    ``*_cold_bytes``: the first step in a fresh process; ``*_warm_bytes``: the second one.
    ``ratio`` = rnnfast / torch (cold); ``ok`` = rnnfast <= torch.nn (cold), strictly, no
    allowance for page-level noise; ``ratio_warm`` / ``ok_warm`` the same for the warm step.
    """

    layer: str
    shape: str
    T: int
    B: int
    H: int
    dtype: str = "float32"
    status: str = "ok"
    message: str = ""
    method: str = ""
    torch_cold_bytes: Optional[int] = None
    fast_cold_bytes: Optional[int] = None
    torch_warm_bytes: Optional[int] = None
    fast_warm_bytes: Optional[int] = None
    ratio: Optional[float] = None
    ratio_warm: Optional[float] = None
    ok: Optional[bool] = None
    ok_warm: Optional[bool] = None

    @property
    def label(self) -> str:
        return f"{self.layer} {self.shape} train-step memory"


#: The directory that holds the ``bench`` package: the child appends it to its ``sys.path``.
_PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)

#: What the child interpreter runs. The package directory is appended, not prepended, so that
#: ``rnnfast`` resolves in the child exactly as in a plain interpreter started in the same
#: directory with the same environment (an installed build stays ahead of a source tree).
_CHILD_CODE = (
    "import sys\n"
    "if {parent!r} not in sys.path:\n"
    "    sys.path.append({parent!r})\n"
    "from bench.memory import child_main\n"
    "sys.exit(child_main(sys.argv[1]))\n"
)

_RESULT_MARKER = "RNNFAST_MEMORY_RESULT "


def child_main(spec: str) -> int:
    """Entry point of the child interpreter: ``spec`` is
    ``layer,impl,T,B,H,seed,threads,extra_bytes[,dtype]``; prints the result as one JSON line."""
    layer, impl, t, b, h, seed, threads, extra, *rest = spec.split(",")
    res = _memory_child(layer, impl, int(t), int(b), int(h), int(seed), int(threads), int(extra),
                        rest[0] if rest else "float32")
    print(_RESULT_MARKER + json.dumps(res), flush=True)
    return 0


def measure_step_memory(spec: LayerSpec, impl: str, shape: Shape, seed: int = 0, threads: int = 2,
                        extra_bytes: int = 0, timeout: float = 600.0,
                        env: Optional[Dict[str, str]] = None, dtype: str = "float32") -> Dict[str, Any]:
    """Run :func:`_memory_child` in a fresh ``sys.executable`` and return its result dict.

    The child runs :func:`child_main` (``python -c``, in this process's working directory; it
    finds this package wherever the working directory is). Its environment is this one's, plus
    :data:`_MEMORY_ENV_DEFAULTS` where not set, plus ``env``. Raises RuntimeError when the
    child fails.
    """
    import subprocess  # noqa: PLC0415

    child_env = dict(os.environ)
    for k, v in _MEMORY_ENV_DEFAULTS.items():
        child_env.setdefault(k, v)
    if env:
        child_env.update(env)
    cmd = [sys.executable, "-c", _CHILD_CODE.format(parent=_PACKAGE_PARENT),
           f"{spec.key},{impl},{shape.T},{shape.B},{shape.H},{seed},{threads},{extra_bytes},{dtype}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env, check=False)
    for ln in p.stdout.splitlines():
        if ln.startswith(_RESULT_MARKER):
            return json.loads(ln[len(_RESULT_MARKER):])
    raise RuntimeError(f"memory child failed (rc {p.returncode}): "
                       f"{first_lines(p.stderr[-2000:] or p.stdout[-2000:], 4)}")


def measure_memory(specs: Optional[Sequence[LayerSpec]] = None, shapes: Optional[Sequence[Shape]] = None,
                   seed: int = 0, threads: int = 2, log: Optional[Callable[[str], None]] = None,
                   dtype: str = "float32") -> List[MemoryResult]:
    """Peak extra memory of one training step, torch.nn vs rnnfast, per (layer, shape).

    Defaults: every layer rnnfast provides, the full benchmark grid. Each implementation runs in
    its own fresh subprocess (torch.nn first, then rnnfast), both in ``dtype`` ("float32" or
    "bfloat16"). Returns one :class:`MemoryResult`
    per (layer, shape); failures are reported in ``status`` / ``message``, never raised.
    """
    specs = list(specs) if specs is not None else available_layers()
    shapes = list(shapes) if shapes is not None else resolve_shapes(None)
    out: List[MemoryResult] = []
    cells = [(s, sh) for s in specs for sh in shapes]
    t0 = time.perf_counter()
    for i, (spec, shape) in enumerate(cells, 1):
        r = MemoryResult(layer=spec.name, shape=shape.name, T=shape.T, B=shape.B, H=shape.H,
                         dtype=dtype)
        try:
            t = measure_step_memory(spec, "torch", shape, seed, threads, dtype=dtype)
            f = measure_step_memory(spec, "rnnfast", shape, seed, threads, dtype=dtype)
            r.method = t["method"] if t["method"] == f["method"] else f"{t['method']} / {f['method']}"
            r.torch_cold_bytes, r.fast_cold_bytes = t["cold_bytes"], f["cold_bytes"]
            r.torch_warm_bytes, r.fast_warm_bytes = t["warm_bytes"], f["warm_bytes"]
            r.ratio = r.fast_cold_bytes / r.torch_cold_bytes if r.torch_cold_bytes else None
            r.ok = r.fast_cold_bytes <= r.torch_cold_bytes
            if r.torch_warm_bytes is not None and r.fast_warm_bytes is not None:
                r.ratio_warm = r.fast_warm_bytes / r.torch_warm_bytes if r.torch_warm_bytes else None
                r.ok_warm = r.fast_warm_bytes <= r.torch_warm_bytes
        except Exception as e:  # noqa: BLE001 - report, do not crash the whole run
            r.status, r.message = "ERROR", f"{type(e).__name__}: {first_lines(str(e), 3)}"
        out.append(r)
        if log is not None:
            if r.status == "ok":
                detail = (f"torch {r.torch_cold_bytes / 2**20:.1f} MiB, rnnfast {r.fast_cold_bytes / 2**20:.1f} MiB"
                          f" (x{r.ratio:.2f}{'' if r.ok else ', LARGER'})")
                if r.ratio_warm is not None:
                    detail += (f"; warm step torch {r.torch_warm_bytes / 2**20:.1f}, rnnfast "
                               f"{r.fast_warm_bytes / 2**20:.1f} MiB")
            else:
                detail = f"{r.status}: {r.message}"
            log(f"[{i}/{len(cells)}] {r.label} ... {detail}  [{time.perf_counter() - t0:.1f}s]")
    return out

