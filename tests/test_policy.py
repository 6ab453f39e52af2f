"""How strictly the course is tested is itself pinned and tested.

- tests/notebook_policy.json records, per notebook, its number of code cells, of ``nbval-ignore-output`` cells and
  its nbval mode (strict / lax): loosening a notebook's test is a visible change to that file.
- A notebook cell that shows a proof (an equality, "identical", a max |diff|) must assert it, whatever its tag.
- tests/check_results.py, the gate after `make test`, refuses skips that tests/skip_allowlist.json does not explain.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
POLICY = json.loads((ROOT / "tests" / "notebook_policy.json").read_text("utf-8"))["notebooks"]
sys.path.insert(0, str(ROOT / "tests"))
import check_results  # noqa: E402  (tests/ is not a package)

# A cell "shows a proof" when what it prints talks about equality; then it must also assert it.
PROOF_WORDS = re.compile(r"max \|diff|\bequal\b|\bequals\b|identical|\bsame\b.*[:=]|allclose", re.IGNORECASE)


def _code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text("utf-8"))["cells"] if c["cell_type"] == "code"]


def _printed_text(source: str) -> str:
    """The string literals inside print(...) / f-strings of a cell: what a student reads as the cell's claim."""
    return " ".join(re.findall(r"print\((.*)", source))


def test_every_notebook_is_pinned():
    names = {p.name for p in NOTEBOOKS}
    assert names == set(POLICY), (
        f"tests/notebook_policy.json must list exactly the notebooks: missing {sorted(names - set(POLICY))}, "
        f"stale {sorted(set(POLICY) - names)}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_ignore_output_count_and_lax_switch_are_pinned(path):
    cells = _code_cells(path)
    meta = json.loads(path.read_text("utf-8"))["metadata"].get("diffusion_lab", {})
    found = {
        "code_cells": len(cells),
        "ignore_output_cells": sum("nbval-ignore-output" in c.get("metadata", {}).get("tags", []) for c in cells),
        "nbval": meta.get("nbval", "strict"),
    }
    pinned = {k: POLICY[path.name][k] for k in found}
    assert found == pinned, (
        f"{path.name}: the notebook has {found}, tests/notebook_policy.json pins {pinned}. If the change is meant "
        "(a cell added, a cell now compared), update the policy file in the same commit and say why."
    )
    assert "nbval-skip" not in json.dumps([c.get("metadata", {}) for c in cells]), f"{path.name}: a cell is skipped"


def test_lax_only_for_hardware_ci_lacks():
    for name, entry in POLICY.items():
        assert entry["nbval"] in ("strict", "lax"), f"{name}: nbval must be 'strict' or 'lax'"
        if entry["nbval"] == "lax":
            reason = entry.get("lax_reason", "")
            assert re.search(r"GPU|CUDA|hardware", reason), (
                f"{name} is lax; lax is allowed only where stored outputs come from hardware CI does not have "
                f"(say which in lax_reason), found {reason!r}"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_cells_that_print_a_proof_assert_it(path):
    unasserted = []
    for i, cell in enumerate(_code_cells(path)):
        source = "".join(cell["source"])
        if PROOF_WORDS.search(_printed_text(source)) and "assert" not in source:
            unasserted.append(f"code cell {i}: {source.strip().splitlines()[0][:80]}")
    assert not unasserted, f"{path.name}: these cells print a proof without asserting it: {unasserted}"


# --------------------------------------------------------------------------------------------------- the gate


def _junit(path: Path, cases: list[tuple[str, str, str | None]], failed: str | None = None) -> None:
    """A junit file as pytest writes it: cases are (classname, name, skip message or None)."""
    body = []
    for classname, name, skip in cases:
        inner = f'<skipped type="pytest.skip" message="{skip}">{skip}</skipped>' if skip else ""
        if name == failed:
            inner = '<failure message="boom">boom</failure>'
        body.append(f'<testcase classname="{classname}" name="{name}" time="0.1">{inner}</testcase>')
    path.write_text(
        f'<testsuites><testsuite name="pytest" tests="{len(cases)}">{"".join(body)}</testsuite></testsuites>'
    )


def _results(tmp_path, unit=None, notebooks=None, browser=None, failed=None):
    _junit(tmp_path / "unit.xml", unit or [("tests.test_a", "test_one", None)], failed)
    _junit(tmp_path / "notebooks.xml", notebooks or [("notebooks.01", "Cell 0", None)])
    _junit(tmp_path / "notebooks_half.xml", [("notebooks.10_stable_diffusion_xl", "Cell 0", None)])
    _junit(tmp_path / "browser.xml", browser or [("tests.browser.test_widgets_in_browser", "test_widgets", None)])
    return tmp_path


ALLOWLIST = check_results.load_allowlist()
NO_CHROMIUM = "no Chromium found: install one"


def test_gate_passes_clean_runs(tmp_path):
    assert check_results.check(_results(tmp_path), ALLOWLIST, ci=True) == []


def test_gate_refuses_an_unlisted_skip(tmp_path):
    unit = [("tests.test_bridge", "test_real", "could not import 'diffusers'"), ("tests.test_a", "test_one", None)]
    problems = check_results.check(_results(tmp_path, unit=unit), ALLOWLIST, ci=False)
    assert len(problems) == 1 and "tests.test_bridge::test_real" in problems[0] and "skip_allowlist" in problems[0]


def test_gate_allows_the_browser_skip_on_a_laptop_but_not_in_ci(tmp_path):
    browser = [("tests.browser.test_widgets_in_browser", "test_widgets[01]", NO_CHROMIUM)]
    results = _results(tmp_path, browser=browser)
    assert check_results.check(results, ALLOWLIST, ci=False) == []
    problems = check_results.check(results, ALLOWLIST, ci=True)
    assert len(problems) == 1 and "for CI" in problems[0]
    assert check_results.in_ci({"CI": "true"}) and check_results.in_ci({"DIFFUSION_LAB_REQUIRE_BROWSER": "1"})
    assert not check_results.in_ci({})


def test_gate_refuses_failures_empty_and_missing_runs(tmp_path):
    problems = check_results.check(_results(tmp_path, failed="test_one"), ALLOWLIST, ci=False)
    assert problems == ["unit: 1 tests failed"]
    _junit(tmp_path / "notebooks.xml", [])
    assert "notebooks: ran no test" in check_results.check(tmp_path, ALLOWLIST, ci=False)
    (tmp_path / "browser.xml").unlink()
    assert any("browser" in p and "missing" in p for p in check_results.check(tmp_path, ALLOWLIST, ci=False))
    (tmp_path / "notebooks_half.xml").unlink()
    assert any("notebooks_half" in p and "missing" in p for p in check_results.check(tmp_path, ALLOWLIST, ci=False))


def test_make_test_runs_every_gated_run_before_the_gate():
    """The half-precision run of notebooks 10-13 is part of `make test`, before the gate, and the gate reads it."""
    makefile = (ROOT / "Makefile").read_text("utf-8")
    test_line = next(line for line in makefile.splitlines() if line.startswith("test:"))
    steps = test_line.split(":", 1)[1].split()
    assert steps.index("notebooks-half") < steps.index("gate")
    assert "notebooks_half" in check_results.RUNS
    assert "DIFFUSION_LAB_DTYPE=" in makefile and "$(RESULTS)/notebooks_half.xml" in makefile


def test_allowlist_entries_need_a_reason(tmp_path):
    bad = tmp_path / "allow.json"
    bad.write_text(
        json.dumps({"skips": [{"tests": "*", "message_contains": "", "reason": "ok", "allowed_in_ci": True}]})
    )
    with pytest.raises(ValueError, match="real reason"):
        check_results.load_allowlist(bad)
    bad.write_text(json.dumps({"skips": [{"tests": "*", "reason": "because the hardware is missing here"}]}))
    with pytest.raises(ValueError, match="lacks"):
        check_results.load_allowlist(bad)
