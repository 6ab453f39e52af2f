"""The gate after `make test`: read the junit files of every test run and refuse what would pass silently.

    python tests/check_results.py [build/test-results]

It fails (exit status 1, with the reason) when a run
- is missing, or ran no test at all (pytest exits 5 then, but a future `|| true` must not turn that into a pass);
- had a failure or an error;
- skipped a test that is not on the allowlist `tests/skip_allowlist.json`, where every allowed skip names the tests
  (a glob over ``module::test``), the text its skip message must contain, and the reason it may be skipped. Entries
  with ``"allowed_in_ci": false`` are refused when ``CI`` or ``DIFFUSION_LAB_REQUIRE_BROWSER`` is set: a student's
  laptop without Chromium may skip the browser test, CI may not;
- left a temporary behind: a killed save's ``.<name>.tmp-*`` / ``.<name>.old-*`` or a ``.*.damaged-*`` folder in the repository or the
  tiny-pipeline cache, or a notebook's scratch folder (``dlab-scratch-*``, see ``diffusion_lab/utils/scratch.py``)
  in the temporary folder whose process has ended (the notebook run removes those of its killed kernels).

So a broken install that makes a thousand tests skip, a notebook cell marked ``nbval-skip`` or a new ``pytest.skip``
fails `make test` until someone adds it to the allowlist with a reason, in a visible change.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

RUNS = ("unit", "notebooks", "notebooks_half", "browser")  # the junit files `make test` writes, in its order
ALLOWLIST = Path(__file__).with_name("skip_allowlist.json")


@dataclass
class Skip:
    test: str  # "module.path::test_name[param]" as junit names it
    message: str


@dataclass
class RunSummary:
    name: str
    tests: int
    failed: int
    skips: list[Skip]


def read_run(path: Path, name: str) -> RunSummary:
    """Counts of one junit file (pytest writes one <testsuite> inside <testsuites>)."""
    root = ET.parse(path).getroot()
    tests = failed = 0
    skips = []
    for case in root.iter("testcase"):
        tests += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
        skipped = case.find("skipped")
        if skipped is not None:
            test = f"{case.get('classname', '')}::{case.get('name', '')}"
            skips.append(Skip(test, " ".join(filter(None, [skipped.get("message"), skipped.text]))))
    return RunSummary(name, tests, failed, skips)


def load_allowlist(path: Path = ALLOWLIST) -> list[dict]:
    entries = json.loads(path.read_text("utf-8"))["skips"]
    for i, entry in enumerate(entries):
        missing = {"tests", "message_contains", "reason", "allowed_in_ci"} - set(entry)
        if missing:
            raise ValueError(f"{path.name} entry {i} lacks {sorted(missing)}: every allowed skip needs all four")
        if len(entry["reason"].strip()) < 20:
            raise ValueError(f"{path.name} entry {i}: give a real reason (a sentence), not {entry['reason']!r}")
    return entries


def in_ci(environ=os.environ) -> bool:
    return bool(environ.get("CI")) or environ.get("DIFFUSION_LAB_REQUIRE_BROWSER") == "1"


def unexplained_skips(skips: list[Skip], allowlist: list[dict], ci: bool) -> list[Skip]:
    """The skips that no allowlist entry explains (in CI, entries with allowed_in_ci=false explain nothing)."""

    def allowed(skip: Skip) -> bool:
        return any(
            fnmatch.fnmatchcase(skip.test, entry["tests"])
            and entry["message_contains"] in skip.message
            and (entry["allowed_in_ci"] or not ci)
            for entry in allowlist
        )

    return [s for s in skips if not allowed(s)]


def check(results: Path, allowlist: list[dict], ci: bool) -> list[str]:
    """Every problem found, as a sentence; empty when the runs may pass."""
    problems = []
    for name in RUNS:
        path = results / f"{name}.xml"
        if not path.exists():
            problems.append(f"{name}: {path} is missing (did `make {name}` run?)")
            continue
        run = read_run(path, name)
        print(f"{name}: {run.tests} tests, {run.failed} failed, {len(run.skips)} skipped")
        if run.tests == 0:
            problems.append(f"{name}: ran no test")
        if run.failed:
            problems.append(f"{name}: {run.failed} tests failed")
        for skip in unexplained_skips(run.skips, allowlist, ci):
            problems.append(
                f"{name}: {skip.test} was skipped ({skip.message.strip()[:200]}) and is not on "
                f"tests/{ALLOWLIST.name}{' for CI' if ci else ''}: fix the cause, or add it there with a reason"
            )
    return problems


_TEMPORARY = re.compile(r"^\..+\.(tmp-|old-|damaged-).+")  # utils.checkpoint's and bridge.hub's temporaries
_SKIP_DIRS = {".git", ".venv", "node_modules", "build", "__pycache__", ".ipynb_checkpoints", ".pytest_cache"}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leftover_temporaries(repo: Path, tmp: Path, cache: Path) -> list[str]:
    """Every temporary a finished test run left behind (see the module docstring), as a sentence each."""
    found = []
    for root in (repo, cache):
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
            for name in dirnames + filenames:
                if _TEMPORARY.match(name):
                    found.append(f"{Path(dirpath, name)} is a temporary of an interrupted save or rebuild")
    for folder in tmp.glob("dlab-scratch-*"):
        match = re.search(r"(\d+)-[^-]+$", folder.name)
        if match and not _pid_alive(int(match.group(1))):
            found.append(f"{folder} is a scratch folder whose process has ended")
    return found


def _cache_root() -> Path:  # the default of diffusion_lab.bridge.hub._cache_root, without importing the library
    return Path(os.environ.get("DIFFUSION_LAB_CACHE") or Path.home() / ".cache" / "diffusion_lab")


def main(argv: list[str]) -> int:
    results = Path(argv[1] if len(argv) > 1 else "build/test-results")
    problems = check(results, load_allowlist(), in_ci())
    repo = Path(__file__).resolve().parent.parent
    problems += leftover_temporaries(repo, Path(tempfile.gettempdir()), _cache_root())
    for problem in problems:
        print("FAIL", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
