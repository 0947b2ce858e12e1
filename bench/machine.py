"""The machine and the code a run measured: CPU model and ISA flags, load, torch and rnnfast
versions and build info (the kernel set), GPU, and the git commit of the source tree."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .grid import import_rnnfast

__all__ = [
    "ISA_FLAGS", "cpu_model", "cpu_vendor", "cpu_flags", "isa_flags", "load_average", "git_state", "kernel_set",
    "machine_info", "format_isa", "format_machine",
]

#: The CPU flags that decide which rnnfast kernels and which torch/oneDNN paths run.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")

#: The source tree the bench package lives in (its parent directory).
SOURCE_ROOT = Path(__file__).resolve().parent.parent


def _cpuinfo_field(name: str) -> Optional[str]:
    """The first ``name : value`` line of /proc/cpuinfo, or None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """``model name`` from /proc/cpuinfo (else what :mod:`platform` knows, else ``unknown``)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_vendor() -> Optional[str]:
    """``amd``, ``intel`` or another vendor's ``vendor_id`` from /proc/cpuinfo, lower case (None
    where it cannot be read)."""
    vendor = _cpuinfo_field("vendor_id")
    if not vendor:
        return None
    return {"authenticamd": "amd", "genuineintel": "intel"}.get(vendor.lower(), vendor.lower())


def cpu_flags() -> Optional[set]:
    """The CPU's flags from /proc/cpuinfo (None where it cannot be read)."""
    flags = _cpuinfo_field("flags")
    return set(flags.split()) if flags is not None else None


def isa_flags() -> Dict[str, Optional[bool]]:
    """:data:`ISA_FLAGS` -> present (None for each when /proc/cpuinfo is unreadable)."""
    flags = cpu_flags()
    return {f: (None if flags is None else f in flags) for f in ISA_FLAGS}


def load_average() -> Optional[float]:
    """1-minute load average from /proc/loadavg (None where unavailable)."""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _git(*args: str) -> Optional[str]:
    try:
        p = subprocess.run(["git", "-C", str(SOURCE_ROOT), *args], capture_output=True, text=True,
                           timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def git_state() -> str:
    """The source tree's commit: ``abc1234``, ``abc1234 + uncommitted changes`` when a tracked
    file differs from it (the generated ``docs/results/`` excepted), or ``unknown`` outside git."""
    commit = _git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs/results")
    return commit + (" + uncommitted changes" if dirty else "")


def kernel_set(info: Dict[str, Any]) -> str:
    """rnnfast's CPU kernel set (``build_info()["cpu_kernels"]``: ``avx2``, ``avx512``, ...)."""
    build = info.get("rnnfast_build")
    kernels = build.get("cpu_kernels") if isinstance(build, dict) else None
    return str(kernels) if kernels else "unknown"


def results_key(info: Dict[str, Any]) -> str:
    """The machine kind a results file is named by: the CPU vendor (``cpu_vendor``, where known),
    then the kernel set, with ``-amx`` where rnnfast's bfloat16 layers run on AMX tiles and
    ``-bf16`` where they run AVX512-BF16 dot products (``build_info()["bf16_gemm"]``): so the
    tables of an AVX-512 EPYC, an AVX512-BF16 Xeon and an AMX Xeon live side by side
    (``amd-avx512-bf16``, ``intel-avx512-bf16``, ``intel-avx512-amx``)."""
    build = info.get("rnnfast_build")
    bf16 = str(build.get("bf16_gemm", "") if isinstance(build, dict) else "")
    suffix = "-amx" if bf16.startswith("amx") else "-bf16" if bf16.startswith("avx512_bf16") else ""
    vendor = info.get("cpu_vendor")
    return (f"{vendor}-" if vendor else "") + kernel_set(info) + suffix


def machine_info(device: str = "cpu") -> Dict[str, Any]:
    """CPU model and ISA flags, core and thread counts, torch and rnnfast versions and build
    info, GPU name, the git state of the source tree, and the date (UTC, now)."""
    info: Dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_model(),
        "cpu_vendor": cpu_vendor(),
        "isa": isa_flags(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "device": device,
        "git": git_state(),
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    try:
        rnnfast = import_rnnfast()
        info["rnnfast"] = getattr(rnnfast, "__version__", "unknown")
        info["rnnfast_path"] = os.path.dirname(getattr(rnnfast, "__file__", "") or "") or "unknown"
        c_ext = getattr(rnnfast, "_C", None)
        if c_ext is not None and hasattr(c_ext, "build_info"):
            info["rnnfast_build"] = c_ext.build_info()
        elif hasattr(rnnfast, "build_info"):
            info["rnnfast_build"] = rnnfast.build_info()
    except Exception as e:  # noqa: BLE001
        info["rnnfast"] = f"not importable: {type(e).__name__}: {e}"
    return info


def format_isa(isa: Dict[str, Optional[bool]]) -> str:
    """``avx2 yes, avx512f yes, avx512_bf16 no, amx_bf16 no``."""
    return ", ".join(f"{k} {'?' if v is None else ('yes' if v else 'no')}" for k, v in isa.items())


def format_machine(info: Dict[str, Any]) -> str:
    """Human-readable machine block for the report."""
    lines = [
        f"CPU: {info.get('cpu')} ({info.get('cpu_count')} logical CPUs), "
        f"torch threads: {info.get('torch_threads')}",
    ]
    if info.get("isa"):
        lines.append(f"ISA: {format_isa(info['isa'])}")
    lines += [
        f"torch {info.get('torch')} (oneDNN {'on' if info.get('mkldnn') else 'off'}), "
        f"python {info.get('python')}, {info.get('platform')}",
        f"rnnfast {info.get('rnnfast')}" + (f" ({info['rnnfast_path']})" if info.get("rnnfast_path") else "")
        + (f", source tree commit {info['git']}" if info.get("git") else ""),
    ]
    if "rnnfast_build" in info:
        lines.append(f"rnnfast build: {info['rnnfast_build']}")
    if info.get("load_start") is not None:
        lines.append(f"load average (1 min): {info['load_start']:.2f} at start"
                     + (f", {info['load_end']:.2f} at end" if info.get("load_end") is not None else ""))
    if "gpu" in info:
        lines.append(f"GPU: {info['gpu']} (CUDA {info.get('cuda')}, cuDNN {info.get('cudnn')}, "
                     f"TF32 {'on' if info.get('tf32') else 'off'})")
    if info.get("gemm_peak_gflops"):
        lines.append(
            f"measured GEMM peak ({info.get('gemm_peak_dtype')}, n={info.get('gemm_peak_n')}): "
            f"{info['gemm_peak_gflops']:.0f} GF/s"
            + (f" (best of start {info['gemm_peak_gflops_start']:.0f}, end {info['gemm_peak_gflops_end']:.0f})"
               if "gemm_peak_gflops_end" in info else "")
        )
    return "\n".join(lines)

