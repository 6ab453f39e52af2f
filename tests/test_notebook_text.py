"""The notebooks' markdown holds no control characters: a LaTeX command written in a Python string without its
backslash escaped (\\tilde, \\varepsilon, \\beta, \\frac, \\rho, \\alpha) turns into a tab, a vertical tab, a backspace, a
form feed, a carriage return or a bell, and the formula renders garbled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
CONTROL = {"\t": "tab (\\t…)", "\x0b": "vertical tab (\\v…)", "\x08": "backspace (\\b…)", "\x0c": "form feed (\\f…)",
           "\r": "carriage return (\\r…)", "\x07": "bell (\\a…)"}  # fmt: skip


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 10


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_markdown_has_no_control_characters(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    found = [
        (i, name, "".join(cell["source"])[max(0, k - 20) : k + 20])
        for i, cell in enumerate(cells)
        if cell["cell_type"] == "markdown"
        for char, name in CONTROL.items()
        if (k := "".join(cell["source"]).find(char)) >= 0
    ]
    assert not found, f"{path.name}: markdown cell, control character, context: {found}"
