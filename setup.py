"""Build rnnfast's compiled core, ``rnnfast._C``, as a torch C++/CUDA extension.

Install with torch already installed (the extension is built against the torch
that will import it)::

    pip install --no-build-isolation .          # or -e . for development

Switches (environment variables):

* ``RNNFAST_CPU_ONLY=1``  build the CPU kernels only, even with a CUDA toolchain.
* ``FORCE_CUDA=1``        build the CUDA kernels even when torch reports no GPU;
                          needs a CUDA build of torch and nvcc (CUDA_HOME).
* ``TORCH_CUDA_ARCH_LIST`` CUDA architectures (default here: "8.0;9.0").
* ``MAX_JOBS``            parallel compile jobs (ninja).
* ``RNNFAST_DEBUG=1``     -O0 -g, for debugging the C++ core.
* ``RNNFAST_NO_EMULATOR=1`` skip the test-only extension ``rnnfast._simt_emu`` (the CUDA
                          kernels in the SIMT emulator, which the tests need).

Two extensions: ``rnnfast._C`` (production: the CPU kernels, and the CUDA kernels in a
CUDA build) and ``rnnfast._simt_emu`` (testing: the CUDA operators compiled for the SIMT
emulator, registered as ``torch.ops.rnnfast_emu.*``).

Nothing is downloaded at build time.
"""
from __future__ import annotations

import glob
import os
import re
import sys

from setuptools import find_packages, setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def read_version() -> str:
    with open(os.path.join(ROOT, "rnnfast", "_version.py")) as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def want_cuda() -> bool:
    if env_flag("RNNFAST_CPU_ONLY"):
        return False
    if env_flag("FORCE_CUDA"):
        if torch.version.cuda is None:
            raise RuntimeError("FORCE_CUDA=1 needs a CUDA build of torch; this torch is "
                               f"{torch.__version__} (CPU only).")
        if cpp_extension.CUDA_HOME is None:
            raise RuntimeError("FORCE_CUDA=1 but nvcc was not found: set CUDA_HOME.")
        return True
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def cuda_fp16_include() -> str | None:
    """A directory with CUDA's cuda_fp16.h and cuda_bf16.h, or None."""
    candidates = []
    if cpp_extension.CUDA_HOME:
        candidates.append(os.path.join(cpp_extension.CUDA_HOME, "include"))
    candidates.append("/usr/local/cuda/include")
    candidates += [os.path.join(p, "nvidia", "cu13", "include") for p in sys.path if p]
    for d in candidates:
        # A complete set: the half headers include crt/host_defines.h.
        if all(os.path.isfile(os.path.join(d, h))
               for h in ("cuda_fp16.h", "cuda_bf16.h", os.path.join("crt", "host_defines.h"))):
            return d
    return None


def torch_cuda_wheel_includes() -> list[str]:
    """CUDA headers that torch's CUDA wheels ship (cusparse.h, cublas_v2.h, ...) under
    site-packages/nvidia/cu*/include: torch's headers need some that a bare nvcc
    install may lack. Searched after CUDA_HOME/include (-isystem), so nvcc's own
    headers win wherever both have one."""
    found = []
    for p in sys.path:
        for cu in ("cu13", "cu12"):
            d = os.path.join(p, "nvidia", cu, "include") if p else ""
            if d and os.path.isfile(os.path.join(d, "cusparse.h")) and d not in found:
                found.append(d)
    return found


def rel(paths: list[str]) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def extensions():
    version = read_version()
    debug = env_flag("RNNFAST_DEBUG")
    with_cuda = want_cuda()
    core = glob.glob(os.path.join(ROOT, "csrc", "core", "*.cpp"))
    sources = rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")) + core
                  + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    include_dirs = [os.path.join(ROOT, "csrc")]
    # C++20: torch >= 2.14's headers require it (and it builds against older torch too).
    cxx = ["-O0" if debug else "-O3", "-std=c++20", "-fopenmp", "-fno-math-errno",
           "-fno-trapping-math", "-Wall", "-Wno-unknown-pragmas",
           f'-DRNNFAST_VERSION="{version}"']
    if debug:
        cxx.append("-g")
    # ptxas reports registers/shared memory per kernel (-v, kept in the build log)
    # and a register spill fails the build (-warn-spills made an error).
    nvcc = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-Xptxas=-v,-warn-spills,-Werror",
            "-Werror", "all-warnings", f'-DRNNFAST_VERSION="{version}"']
    define_macros = []
    ext_cls = cpp_extension.CppExtension
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))
                       + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")))
        define_macros += [("RNNFAST_WITH_CUDA", None),
                          ("RNNFAST_CUDA_ARCHS", f'"{os.environ["TORCH_CUDA_ARCH_LIST"]}"')]
        ext_cls = cpp_extension.CUDAExtension
        for d in torch_cuda_wheel_includes():
            nvcc += ["-isystem", d]
    exts = [ext_cls(
        name="rnnfast._C",
        sources=sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx, "nvcc": nvcc} if with_cuda else {"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )]
    # The test-only emulator extension takes __half/__nv_bfloat16 from CUDA's own headers
    # when they are on this machine; without them it supports float32/64.
    fp16_dir = cuda_fp16_include()
    if not env_flag("RNNFAST_NO_EMULATOR"):
        exts.append(cpp_extension.CppExtension(
            name="rnnfast._simt_emu",
            sources=rel(core + glob.glob(os.path.join(ROOT, "csrc", "simt", "*.cpp"))),
            include_dirs=include_dirs + ([fp16_dir] if fp16_dir else []),
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        ))
    print(f"rnnfast {version}: building {'CPU+CUDA' if with_cuda else 'CPU-only'} "
          f"against torch {torch.__version__}; test-only SIMT emulator: "
          + ("not built (RNNFAST_NO_EMULATOR)" if env_flag("RNNFAST_NO_EMULATOR") else
             f"half types from {fp16_dir or 'nowhere (cuda_fp16.h not found: float32/64 only)'}"))
    return exts


setup(
    name="rnnfast",
    version=read_version(),
    description="Drop-in torch.nn.LSTM/GRU/RNN with fused CPU and CUDA kernels",
    long_description=open(os.path.join(ROOT, "README.md")).read()
    if os.path.exists(os.path.join(ROOT, "README.md")) else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["rnnfast", "rnnfast.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.13"],
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
