"""The library's layout holds: layers import downwards only, no import cycle, heavy libraries only in the bridge,
no function-level import without its reason, no module over 600 lines without its reason, a light ``import``.

The layers, lowest first (a module imports from its own layer or lower ones):

    utils < maths < mnist < schedulers < models < pipelines < training < bridge < course < diffusion_lab/__init__
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "diffusion_lab"
LAYERS = ("utils", "maths", "mnist", "schedulers", "models", "pipelines", "training", "bridge", "course", "")
HEAVY = ("diffusers", "transformers", "peft")
# modules below the bridge allowed to import a heavy library at module level, with the reason
HEAVY_ALLOWED: dict[str, str] = {
    "diffusion_lab.schedulers.scheduling_utils": "our schedulers are diffusers schedulers (SchedulerMixin, ConfigMixin), "
    "so a diffusers pipeline saves and loads them",
    "diffusion_lab.schedulers.scheduling_ddpm": "register_to_config on the constructor (see scheduling_utils)",
    "diffusion_lab.schedulers.scheduling_ddim": "register_to_config on the constructor (see scheduling_utils)",
    "diffusion_lab.schedulers.scheduling_flow_match_euler_discrete": "a diffusers SchedulerMixin + ConfigMixin with "
    "register_to_config (see scheduling_utils)",
    "diffusion_lab.schedulers.scheduling_sigma_utils": "the σ-schedulers' base is a diffusers SchedulerMixin + "
    "ConfigMixin (see scheduling_utils)",
    "diffusion_lab.schedulers.scheduling_euler_discrete": "register_to_config on the constructor (see scheduling_utils)",
    "diffusion_lab.schedulers.scheduling_euler_ancestral_discrete": "register_to_config on the constructor (see "
    "scheduling_utils)",
    "diffusion_lab.schedulers.scheduling_heun_discrete": "register_to_config on the constructor (see scheduling_utils)",
    "diffusion_lab.schedulers.scheduling_dpmsolver_multistep": "register_to_config on the constructor (see "
    "scheduling_utils)",
}
MAX_LINES = 600
LONG_REASON = "Longer than 600 lines:"  # a module over MAX_LINES states why in its docstring, after these words
LAZY_REASON = "# lazy:"  # a function-level import says why on its own line


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1] if len(parts) > 1 and parts[1] in LAYERS else "")


def _imports(path: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(module-level, function-level) imports of one file as (line, imported module); ``from pkg import mod``
    counts as importing ``pkg.mod`` when that is a module of ours."""
    tree = ast.parse(path.read_text("utf-8"))
    top_level = {id(n) for n in tree.body}
    for node in tree.body:  # imports under a module-level ``if``/``try`` are still module-level
        if isinstance(node, ast.If | ast.Try):
            top_level |= {id(n) for n in ast.walk(node)}
    top, inner = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names
            ]
        else:
            continue
        (top if id(node) in top_level else inner).extend((node.lineno, n) for n in names)
    return top, inner


def test_layers_import_downwards_only():
    wrong = []
    for module, path in MODULES.items():
        for line, target in _imports(path)[0]:
            if target in MODULES and _layer(target) > _layer(module):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} (a higher layer)")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    graph = {m: {t for _, t in _imports(p)[0] if t in MODULES and t != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_heavy_libraries_only_in_the_bridge():
    wrong = []
    for module, path in MODULES.items():
        if _layer(module) >= LAYERS.index("bridge") or module in HEAVY_ALLOWED:
            continue
        for line, target in _imports(path)[0]:
            if target.split(".")[0] in HEAVY:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} at module level")
    assert not wrong, "\n".join(wrong)


def test_function_level_imports_state_their_reason():
    missing = []
    for path in MODULES.values():
        lines = path.read_text("utf-8").splitlines()
        for line, target in _imports(path)[1]:
            if LAZY_REASON not in lines[line - 1]:
                missing.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} inside a function")
    assert not missing, (
        f"move these to the top of the module, or say why on the line ({LAZY_REASON} ...):\n" + "\n".join(missing)
    )


def test_long_modules_state_why():
    long = []
    for path in MODULES.values():
        text = path.read_text("utf-8")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if len(text.splitlines()) > MAX_LINES and LONG_REASON not in doc:
            long.append(f"{path.relative_to(PACKAGE.parent)}: {len(text.splitlines())} lines")
    assert not long, f"split these, or state the reason in the module docstring ({LONG_REASON} ...):\n" + "\n".join(
        long
    )


@pytest.mark.parametrize("heavy", ["matplotlib", "ipywidgets", "transformers", "peft", "accelerate"])
def test_import_diffusion_lab_stays_light(heavy):
    code = f"import sys, diffusion_lab; sys.exit(1 if {heavy!r} in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, f"import diffusion_lab imported {heavy}"


def test_layer_table_names_every_package():
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages == set(LAYERS) - {""}, f"packages {sorted(packages)} vs layers {LAYERS}"
