"""Print one of the README's commands, so that CI runs exactly what a user is told to run.

The README marks each command with ``<!-- readme-command: NAME -->`` on the line before a
fenced code block holding one command line. Usage: ``python3 .ci/readme_command.py main``.
"""
import pathlib
import re
import sys


def command(name: str, readme: pathlib.Path) -> str:
    text = readme.read_text(encoding="utf-8")
    m = re.search(r"<!-- readme-command: " + re.escape(name) + r" -->\s*\n```[a-z]*\n(.*?)\n```",
                  text, re.S)
    if m is None:
        raise SystemExit(f"{readme}: no command marked '<!-- readme-command: {name} -->'")
    lines = [ln for ln in m.group(1).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) != 1:
        raise SystemExit(f"{readme}: the '{name}' block must hold exactly one command line")
    return lines[0]


if __name__ == "__main__":
    root = pathlib.Path(__file__).resolve().parent.parent
    print(command(sys.argv[1], root / "README.md"))
