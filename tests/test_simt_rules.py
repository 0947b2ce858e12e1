"""The rules that let every CUDA kernel also run in the SIMT emulator (docs/design.md,
"CUDA without a GPU"), checked on the sources: outside csrc/simt/ no ``<<<...>>>``
launch, no raw ``__shared__``, no CUB, no inline PTX; and every kernel source is
compiled for the emulator too."""
from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
SOURCES = sorted(p for p in CSRC.rglob("*") if p.suffix in (".cu", ".cuh", ".h", ".cpp"))


def _code(path: pathlib.Path) -> str:
    """The file without comments and string literals."""
    text = path.read_text()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def test_sources_found():
    names = {p.name for p in SOURCES}
    assert {"simt.h", "rnn_device.cuh", "rnn_host.h", "rnn_cuda.cu", "persistent_device.cuh",
            "persistent_host.h"} <= names


def test_no_raw_launch_or_shared_outside_simt():
    offenders = []
    for p in SOURCES:
        if p.parent.name == "simt" and p.name == "simt.h":
            continue
        code = _code(p)
        for pattern in (r"<<<", r"\b__shared__\b", r"\bcub::", r"#include\s*<cub/", r"\basm\b",
                        r"\b__asm__\b"):
            if re.search(pattern, code):
                offenders.append(f"{p.relative_to(ROOT)}: {pattern}")
    assert not offenders, offenders


def test_every_kernel_source_is_emulated():
    """Everything nvcc compiles for the operators is also compiled by emulated_ops.cpp."""
    emulated_text = (CSRC / "simt" / "emulated_ops.cpp").read_text()
    emulated = _code(CSRC / "simt" / "emulated_ops.cpp")
    hosts = {"rnn_host.h": "rnn_device.cuh", "options_host.h": "options_device.cuh"}
    for host, kernels in hosts.items():
        assert f'#include "../cuda/{host}"' in emulated_text, host
        assert f'#include "../kernels/{kernels}"' in (CSRC / "cuda" / host).read_text(), host
    for cu in (CSRC / "cuda").glob("*.cu"):
        includes = re.findall(r'#include "([^"]+)"', cu.read_text())
        local = [i for i in includes if not i.startswith(("ATen", "c10", "torch"))]
        assert "rnn_host.h" in local and set(local) <= set(hosts) | {"../core/operators.h"}, \
            f"{cu.name} includes {local}: emulate them too"
    assert "simt_emu" in emulated
    # The persistent algorithm's host side comes in through rnn_host.h, in both builds.
    assert '#include "persistent_host.h"' in (CSRC / "cuda" / "rnn_host.h").read_text()
    assert '#include "../kernels/persistent_device.cuh"' in \
        (CSRC / "cuda" / "persistent_host.h").read_text()


def test_kernels_take_no_cuda_only_apis():
    """Kernels use only what simt.h provides (no cudaMalloc, streams of their own, etc.)."""
    for name in ("rnn_device.cuh", "rnn_host.h", "options_device.cuh", "options_host.h",
                 "persistent_device.cuh", "persistent_host.h"):
        path = next(p for p in SOURCES if p.name == name)
        code = _code(path)
        assert not re.search(r"\bcuda(Malloc|Memcpy|StreamCreate|DeviceSynchronize)\b", code), name


def test_counted_kernels_access_global_memory_through_simt():
    """The kernels whose launches the emulator counts (rnn_device.cuh, persistent_device.cuh)
    index no pointer parameter of their parameter structs directly: global memory goes
    through simt::ld/ldg/st (load/store), or the counts would miss it."""
    for name in ("rnn_device.cuh", "persistent_device.cuh"):
        code = _code(CSRC / "kernels" / name)
        direct = re.findall(r"\bp\.\w+\[", code)
        assert not direct, f"{name}: {direct}"
