"""bench/onnx_speed.py (``python -m bench --onnx``): the results file and its table, and that a
wrong export is caught by the check and not timed.

Runs the mode in process on its ``--quick`` sizes with the ``dynamo=False`` exporter only
(torch.nn's ``dynamo=True`` export takes seconds per model) and a short time budget.
"""
from __future__ import annotations

import copy
import pathlib
import re
import sys

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# The bench package lives at the repository root, beside rnnfast/; appended (not prepended) so
# that rnnfast itself is imported as it would be without it.
_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from bench import cli, onnx_speed  # noqa: E402

ARGS = ["--onnx", "--quick", "--exporters", "legacy", "--threads", "1", "--min-time", "0.02"]


@pytest.fixture(autouse=True)
def _keep_threads():
    """The run sets torch's thread count; give the other tests theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _results_file(out: pathlib.Path) -> str:
    files = list(out.glob("onnx-cpu-*.md"))
    assert len(files) == 1, files
    return files[0].read_text(encoding="utf-8")


def _row(text: str, layer: str) -> str:
    rows = [ln for ln in text.splitlines() if ln.startswith(f"| {layer} ")]
    assert len(rows) == 1, text
    return rows[0]


def test_onnx_mode_writes_table_with_times(tmp_path, capsys):
    rc = cli.main(ARGS + ["--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    md = _results_file(tmp_path)
    assert md.startswith("# rnnfast vs torch.nn exported to ONNX")
    for key in ("- commit: `", "- date: ", "- CPU: ", "- ISA: ", "- command: `python -m bench --onnx --quick"):
        assert key in md, key
    s = onnx_speed.QUICK_SIZES
    for layer in ("LSTM", "GRU", "RNN"):
        row = _row(md, layer)
        assert row in printed
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "legacy" and cells[-1] == "ok", row
        assert cells[3].startswith(f"{layer} x2 (") and cells[4].startswith(f"{layer} x2 ("), row  # a node per layer
        # checked at the exported shape and at another T and B, for both exports
        assert cells[5] == (f"{s.T}×{s.B}, {s.check_T}×{s.check_B}; " * 2)[:-2], row
        torch_ms, fast_ms, ratio = (float(c) for c in cells[6:9])
        assert torch_ms > 0 and fast_ms > 0 and ratio > 0, row
    assert re.search(r"3 of 3 rows checked and timed; ratio torch\.nn export / rnnfast export \d+\.\d\d", md)


def test_wrong_export_is_caught_and_not_timed(tmp_path, capsys, monkeypatch):
    real_export = onnx_speed.export_onnx

    def wrong_export(model, x, exporter, path):
        """rnnfast's model exported with its second layer's recurrent weights off by 5%: a wrong graph."""
        if type(model.rnn).__module__.startswith("rnnfast"):
            model = copy.deepcopy(model)
            with torch.no_grad():
                model.rnn.weight_hh_l1.mul_(1.05)
        real_export(model, x, exporter, path)

    monkeypatch.setattr(onnx_speed, "export_onnx", wrong_export)
    rc = cli.main(ARGS + ["--layers", "lstm", "--out", str(tmp_path)])
    capsys.readouterr()
    assert rc == 1
    md = _results_file(tmp_path)
    cells = [c.strip() for c in _row(md, "LSTM").strip("|").split("|")]
    assert cells[6:9] == ["-", "-", "-"], cells  # not timed
    assert cells[-1].startswith("FAILED: rnnfast's export: at T=") and "atol" in cells[-1], cells
    assert "0 of 1 rows checked and timed" in md and "1 FAILED" in md


def test_fixed_time_axis_is_checked_at_the_exported_length():
    s = onnx_speed.OnnxSizes(T=7, B=3, I=4, H=5)
    assert onnx_speed._check_shapes(s, False, False) == [(7, 3), (s.check_T, s.check_B)]
    assert onnx_speed._check_shapes(s, True, False) == [(7, 3), (7, s.check_B)]
    assert onnx_speed._check_shapes(s, True, True) == [(7, 3)]
