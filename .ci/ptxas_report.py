"""Summarise ptxas -v output from a build log: one line per kernel and architecture
with registers, static shared memory, stack frame and spills. Exits 1 on any spill.

    python .ci/ptxas_report.py build/cuda-build.log
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys

ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+)'")
PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def demangle(names: list[str]) -> dict[str, str]:
    if not names or shutil.which("c++filt") is None:
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                         check=True).stdout.splitlines()
    return dict(zip(names, out))


def main(path: str) -> int:
    rows: dict[tuple[str, str], dict[str, int]] = {}
    current = None
    with open(path, errors="replace") as f:
        for line in f:
            m = ENTRY.search(line)
            if m:
                current = (m.group(1), m.group(2))
                rows.setdefault(current, {})
                continue
            if current is None:
                continue
            m = PROPS.search(line)
            if m:
                rows[current].update(stack=int(m.group(1)), spill_st=int(m.group(2)),
                                     spill_ld=int(m.group(3)))
                continue
            m = USED.search(line)
            if m:
                rows[current].update(regs=int(m.group(1)), smem=int(m.group(2) or 0))
                current = None
    if not rows:
        print("no ptxas -v output found in", path)
        return 1
    names = demangle(sorted({k for k, _ in rows}))
    spills = 0
    print(f"{'arch':6} {'regs':>4} {'smem':>6} {'stack':>5} {'spill st/ld':>11}  kernel "
          "(dynamic shared memory is set at launch and not shown)")
    for (kernel, arch), r in sorted(rows.items(), key=lambda kv: (names[kv[0][0]], kv[0][1])):
        st, ld = r.get("spill_st", 0), r.get("spill_ld", 0)
        spills += st + ld
        short = re.sub(r"\(rnnfast::gpu::(\w+)<(.*?)>\)$", "", names[kernel])
        short = short.replace("rnnfast::gpu::", "").replace("void ", "")
        print(f"{arch:6} {r.get('regs', 0):>4} {r.get('smem', 0):>6} {r.get('stack', 0):>5} "
              f"{st:>5}/{ld:<5}  {short}")
    print(f"{len(rows)} kernel builds; spills: {'none' if spills == 0 else spills}")
    return 0 if spills == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
