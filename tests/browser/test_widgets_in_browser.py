"""The course's widgets, proven in a real browser: JupyterLab driven by a headless Chromium through Playwright.

nbval has no frontend, so it cannot tell whether a slider renders, moves and redraws its picture. This test does
what a student does: it starts JupyterLab from the running interpreter's environment (``.venv`` under ``make``) on
a free loopback port with a generated token, opens each notebook listed in :data:`WIDGET_NOTEBOOKS`, runs its
cells up to the last one that builds a widget, in quick mode (``DIFFUSION_LAB_SMOKE=1``, offline), moves every
listed control and checks that the picture next to it changes pixel by pixel, and that no cell shows an error or a
widget that failed to load.

- The notebooks are copied to a temporary course folder first (``data/`` is linked beside them), so JupyterLab's
  autosave can never overwrite the stored full-run outputs.
- The system Chromium is used (``CHROMIUM`` if set, else ``chromium`` / ``chromium-browser`` / ``google-chrome``
  on PATH); Playwright never downloads a browser. Without one the test is skipped with the reason, unless
  ``DIFFUSION_LAB_REQUIRE_BROWSER=1`` (set by ``.ci/run``), which turns the skip into a failure.
- Screenshots of each notebook after interaction: ``build/test-results/browser/`` (git-ignored).
- The server runs in its own process group and is always shut down, kernels included, also when a check fails.

Run it alone: ``make browser`` (or ``.venv/bin/python -m pytest tests/browser -v``).
"""

from __future__ import annotations

import atexit
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
SCREENSHOTS = ROOT / "build" / "test-results" / "browser"


@dataclass(frozen=True)
class Control:
    """One ipywidgets control, found by its ``description`` label, and how to change it."""

    kind: str  # "slider" (press a key on its handle), "dropdown" (pick the next option), "text" (type, then Enter)
    label: str
    value: str = ""  # "slider": the key pressed (default ArrowRight; End jumps to the maximum); "text": what is typed


# One list: every notebook with widgets, and the controls to move in it. A notebook that imports ipywidgets or
# diffusion_lab.course.widgets but is missing here fails test_every_widget_notebook_is_listed.
WIDGET_NOTEBOOKS: dict[str, list[Control]] = {
    "01_forward_diffusion.ipynb": [Control("slider", "t", "End"), Control("dropdown", "schedule")],
    "03_ddim_and_samplers.ipynb": [
        Control("slider", "steps"),
        Control("slider", "eta"),
        Control("text", "seed", "7"),
    ],
    "06_classifier_free_guidance.ipynb": [
        Control("slider", "guidance"),
        Control("text", "prompt", "a thick two"),
        Control("text", "seed", "7"),
    ],
    "07_tiny_stable_diffusion.ipynb": [
        Control("slider", "strength"),
        Control("text", "prompt", "a zero"),
        Control("text", "seed", "7"),
    ],
    "09_fast_sampling_and_distillation.ipynb": [  # spacing first: it changes DPM++ 2M's grid, not DDIM's (no Karras σ)
        Control("dropdown", "spacing"),
        Control("dropdown", "sampler"),
        Control("slider", "steps"),
        Control("text", "seed", "7"),
    ],
    "10_stable_diffusion_xl.ipynb": [
        Control("slider", "guidance"),
        Control("text", "prompt", "a castle"),
        Control("text", "seed", "7"),
    ],
}

# Text that JupyterLab or ipywidgets show when a widget cannot be rendered.
WIDGET_FAILURES = (
    "Error displaying widget",
    "Failed to load model class",
    "Widget not found",
    "model not found",
    "Loading widget...",
    "A Jupyter widget could not be displayed",
)


def test_every_widget_notebook_is_listed():
    """The browser test covers every notebook that shows widgets (this check needs no browser)."""
    uses_widgets = set()
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        source = "\n".join("".join(c["source"]) for c in json.loads(path.read_text("utf-8"))["cells"])
        if re.search(r"\bipywidgets\b|diffusion_lab\.course\.widgets|\binteractive\(|\binteract\(", source):
            uses_widgets.add(path.name)
    assert uses_widgets, "no notebook uses widgets: the pattern above is stale"
    missing = uses_widgets - set(WIDGET_NOTEBOOKS)
    assert not missing, f"add these notebooks and their controls to WIDGET_NOTEBOOKS: {sorted(missing)}"
    unknown = set(WIDGET_NOTEBOOKS) - {p.name for p in NOTEBOOKS.glob("*.ipynb")}
    assert not unknown, f"WIDGET_NOTEBOOKS names notebooks that do not exist: {sorted(unknown)}"


# --------------------------------------------------------------------------------------------------- fixtures


def _unavailable(reason: str):
    if os.environ.get("DIFFUSION_LAB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (DIFFUSION_LAB_REQUIRE_BROWSER=1, so this is a failure, not a skip)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> str:
    candidates = [os.environ.get("CHROMIUM")] + [
        shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
    ]
    found = next((c for c in candidates if c and Path(c).exists()), None)
    if found is None:
        _unavailable(
            "no Chromium found: install one (Debian/Ubuntu: apt-get install chromium) or set CHROMIUM=/path/to/chrome"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("playwright is not installed: run `make venv` (it is pinned in requirements.txt)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(settings_dir: Path) -> None:
    """A fresh JupyterLab profile: no news toast over the screenshots, no autosave, every cell in the page
    (JupyterLab 4 otherwise renders only the cells near the viewport), and no "Select Kernel" dialog (a fresh
    profile sometimes asks for a kernel before running, which blocks the page)."""
    for plugin, values in {
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none", "autoStartDefaultKernel": True},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "doNotDisturbMode": True},
        "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    }.items():
        path = settings_dir / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values), "utf-8")


def _kill_group(pid: int, sig: int = signal.SIGKILL) -> bool:
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# A code cell that builds a widget (an explorer of diffusion_lab.course.widgets, or ipywidgets directly).
WIDGET_CELL = re.compile(r"\b\w*Explorer\(|\binteract(?:ive)?\(|\bwidgets\.\w+\(")


def _copy_without_outputs(src: Path, dst: Path) -> None:
    """The notebook as a student downloads it, minus stored outputs and widget state, up to its last cell that
    builds a widget. Stored outputs would be untrusted in this fresh profile, and JupyterLab then renders widget
    views as plain text; the cells after the last widget have nothing to show here (``pytest --nbval`` runs every
    cell of every notebook), so they are left out to keep ``make test`` short."""
    nb = json.loads(src.read_text("utf-8"))
    builds = [
        i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and WIDGET_CELL.search("".join(c["source"]))
    ]
    assert builds, f"{src.name} is listed in WIDGET_NOTEBOOKS but no cell builds a widget ({WIDGET_CELL.pattern})"
    nb["cells"] = nb["cells"][: builds[-1] + 1]
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb["metadata"].pop("widgets", None)
    dst.write_text(json.dumps(nb, indent=1), "utf-8")


@pytest.fixture(scope="module")
def lab(chromium, tmp_path_factory):
    """A JupyterLab server on the course copy; yields (base_url, token); always shut down with its kernels."""
    tmp = tmp_path_factory.mktemp("lab")
    course = tmp / "course"
    (course / "notebooks").mkdir(parents=True)
    for name in WIDGET_NOTEBOOKS:
        _copy_without_outputs(NOTEBOOKS / name, course / "notebooks" / name)
    (course / "data").symlink_to(ROOT / "data", target_is_directory=True)
    _settings(tmp / "settings")

    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    env.update(
        DIFFUSION_LAB_SMOKE="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
        MPLBACKEND="module://matplotlib_inline.backend_inline",
        # this interpreter's environment first: its `python` runs the kernels
        PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
        JUPYTER_CONFIG_DIR=str(tmp / "config"),
        JUPYTER_DATA_DIR=str(tmp / "data"),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
    )
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={course / 'notebooks'}",
    ]
    if hasattr(os, "getuid") and os.getuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp / "jupyterlab.log", "w")  # noqa: SIM115 (closed in finally)
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    # A run stopped from outside (CI timeout, `timeout`, kill) must not leave the server and its kernels behind:
    # SIGTERM becomes KeyboardInterrupt (so the finally below runs) and atexit is a second line of defence.
    atexit.register(_kill_group, server.pid)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({server.returncode}):\n{(tmp / 'jupyterlab.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not answer within 90 s:\n{(tmp / 'jupyterlab.log').read_text()}")
            time.sleep(0.5)
        yield base, token
    finally:
        # the whole process group: the server and every kernel it started
        signal.signal(signal.SIGTERM, previous)
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            if not _kill_group(server.pid, sig):
                break
            try:
                server.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        _kill_group(server.pid, signal.SIGKILL)  # kernels that outlived the server
        atexit.unregister(_kill_group)
        log.close()
        assert server.poll() is not None, "JupyterLab is still running after SIGKILL"


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            yield b
        finally:
            b.close()


# ------------------------------------------------------------------------------------------------ page helpers


def _pixels(png: bytes):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def _changed_fraction(a: bytes, b: bytes) -> float:
    pa, pb = _pixels(a), _pixels(b)
    if pa.shape != pb.shape:
        return 1.0
    return float((abs(pa - pb).max(axis=-1) > 8).mean())


def _menu(page, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(rf"^{menu}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(rf"^{item}$")).click()


def _run_all(page, timeout_s: float) -> None:
    """Run → Run All Cells, then wait until the code cells show [1] … [N] in order (a fresh kernel numbers them
    so; the copies carry no execution counts, which is checked first so that old counts cannot pass)."""
    prompts = [p.strip() for p in page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()]
    assert prompts and all(p == "[ ]:" for p in prompts), f"the notebook copy should not be executed yet: {prompts[:5]}"
    deadline = time.monotonic() + timeout_s
    clicked_at = None
    while True:
        if all(p.strip() == "[ ]:" for p in page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()) and (
            clicked_at is None or time.monotonic() - clicked_at > 15
        ):  # nothing started (yet): in a just-opened notebook "Run All Cells" can be a no-op until the session is up
            _menu(page, "Run", "Run All Cells")
            clicked_at = time.monotonic()
        dialog = page.locator(".jp-Dialog")
        assert not dialog.count(), f"a dialog appeared during Run All: {dialog.inner_text()}"
        prompts = [p.strip() for p in page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()]
        pending = [(i, p) for i, p in enumerate(prompts, 1) if p != f"[{i}]:"]
        if prompts and not pending:
            return
        if _errors(page, widgets=False):
            raise AssertionError("a cell failed during Run All:\n" + "\n".join(_errors(page, widgets=False)))
        if time.monotonic() > deadline:
            raise AssertionError(f"cells still running or not run after {timeout_s:.0f} s: {pending[:5]}")
        page.wait_for_timeout(1000)


def _wait_for_kernel(page, base: str, token: str, notebook: str, timeout_s: float = 120) -> None:
    """Wait until the notebook's kernel is started, connected and idle, so that Run All cannot race its start.

    On a fresh profile JupyterLab may still ask which kernel to start; the dialog is answered with the notebook's
    own kernel here, before anything runs (answering it later would swap the kernel under running cells).
    """
    deadline = time.monotonic() + timeout_s
    ready_since = None
    while True:
        dialog = page.locator(".jp-Dialog")
        if dialog.count():
            text = dialog.inner_text()
            assert "Select Kernel" in text, f"unexpected dialog: {text}"
            dialog.locator("button", has_text=re.compile(r"^Select$")).click()
            ready_since = None
        with urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=10) as r:
            sessions = [x for x in json.load(r) if x["path"].endswith(notebook)]
        idle = bool(sessions) and sessions[0]["kernel"]["execution_state"] == "idle"
        shown = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() > 0
        if idle and shown and not dialog.count():
            ready_since = ready_since or time.monotonic()
            if time.monotonic() - ready_since > 2:  # stable for 2 s
                return
        else:
            ready_since = None
        assert time.monotonic() < deadline, f"the kernel of {notebook} was not ready within {timeout_s:.0f} s"
        page.wait_for_timeout(250)


def _errors(page, widgets: bool = True) -> list[str]:
    """Error outputs and tracebacks; with ``widgets``, also widget-failure messages (not while cells still run:
    "Loading widget..." is normal for a moment)."""
    texts = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]').all_inner_texts()
    texts += (
        page.locator(".jp-OutputArea-output").filter(has_text="Traceback (most recent call last)").all_inner_texts()
    )
    if widgets:
        body = page.locator(".jp-Notebook").inner_text()
        texts += [f"widget failure: {m}" for m in WIDGET_FAILURES if m in body]
    return texts


def _widgets_settled(page, timeout_s: float = 60) -> None:
    """Wait until no widget is still loading (a widget that never loads is then reported by _errors)."""
    deadline = time.monotonic() + timeout_s
    while "Loading widget..." in page.locator(".jp-Notebook").inner_text() and time.monotonic() < deadline:
        page.wait_for_timeout(500)


def _shutdown_kernels(base: str, token: str) -> None:
    """Stop every kernel of the server (a notebook's kernel would otherwise keep the CPU busy during the next one)."""
    try:
        with urllib.request.urlopen(f"{base}/api/kernels?token={token}", timeout=10) as r:
            kernels = json.load(r)
        for k in kernels:
            req = urllib.request.Request(f"{base}/api/kernels/{k['id']}?token={token}", method="DELETE")
            urllib.request.urlopen(req, timeout=30).close()
    except OSError:
        pass  # the server is shut down with its process group at the end anyway


def _control(page, c: Control):
    css = {"slider": ".widget-slider", "dropdown": ".widget-dropdown", "text": ".widget-text"}[c.kind]
    box = page.locator(css).filter(has=page.locator(".widget-label", has_text=re.compile(rf"^{re.escape(c.label)}$")))
    assert box.count() == 1, f"expected one {c.kind} labelled {c.label!r}, found {box.count()}"
    return box


def _widget_image(box):
    """The <img> of the explorer that holds this control (the closest enclosing widget box with an image)."""
    img = box.locator("xpath=ancestor::div[contains(@class,'widget-vbox')][.//img][1]//img")
    assert img.count() == 1, f"expected one image beside the control, found {img.count()}"
    return img


def _change(box, c: Control) -> None:
    if c.kind == "slider":
        handle = box.locator(".noUi-handle")
        handle.focus()
        handle.press(c.value or "ArrowRight")
    elif c.kind == "dropdown":
        select = box.locator("select")
        options = select.locator("option").all_inner_texts()
        # by label: ipywidgets 8 stores each option's value URI-encoded ("Karras%20%CF%83"), so compare shown texts
        current = select.evaluate("s => s.options[s.selectedIndex].text")
        select.select_option(label=next(o for o in options if o != current))
    else:
        field = box.locator("input")
        field.fill(c.value)
        field.press("Enter")


def _readout(box, c: Control) -> str:
    if c.kind == "slider":
        return box.locator(".widget-readout").inner_text()
    if c.kind == "dropdown":
        return box.locator("select").input_value()
    return box.locator("input").input_value()


# ------------------------------------------------------------------------------------------------------ test


@pytest.mark.parametrize("notebook", list(WIDGET_NOTEBOOKS))
def test_widgets_redraw_in_jupyterlab(notebook, lab, browser):
    base, token = lab
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    stem = Path(notebook).stem
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(f"{base}/lab/workspaces/{stem}/tree/{notebook}?reset&token={token}", wait_until="domcontentloaded")
        page.wait_for_selector(".jp-Notebook", timeout=90_000)
        _wait_for_kernel(page, base, token, notebook)
        t0 = time.monotonic()
        _run_all(page, timeout_s=300)
        print(f"{notebook}: Run All finished in {time.monotonic() - t0:.0f} s")
        _widgets_settled(page)
        assert not _errors(page), f"{notebook} shows errors after Run All:\n" + "\n".join(_errors(page))

        for c in WIDGET_NOTEBOOKS[notebook]:
            box = _control(page, c)
            box.scroll_into_view_if_needed()
            img = _widget_image(box)
            page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=img.element_handle(), timeout=60_000)
            before_src, before_png, before_value = img.get_attribute("src"), img.screenshot(), _readout(box, c)
            _change(box, c)
            deadline = time.monotonic() + 120
            while img.get_attribute("src") == before_src:  # a redraw replaces the blob URL
                assert time.monotonic() < deadline, f"{notebook}: moving {c.label!r} did not redraw the image"
                page.wait_for_timeout(250)
            page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=img.element_handle(), timeout=60_000)
            after_value = _readout(box, c)
            changed = _changed_fraction(before_png, img.screenshot())
            assert after_value != before_value, f"{notebook}: {c.label!r} did not move ({before_value!r})"
            assert changed > 0.001, (
                f"{notebook}: {c.label!r} went {before_value!r} -> {after_value!r} but the picture is unchanged "
                f"({changed:.4%} of pixels differ)"
            )
            print(
                f"{notebook}: {c.label} {before_value} -> {after_value}: {changed:.1%} of the picture's pixels changed"
            )
            img.scroll_into_view_if_needed()
            page.screenshot(path=SCREENSHOTS / f"{stem}-{c.label}.png")

        assert not _errors(page), f"{notebook} shows errors after interaction:\n" + "\n".join(_errors(page))
        widget_console = [m for m in console_errors if "widget" in m.lower() or "model" in m.lower()]
        assert not widget_console, f"{notebook}: browser console reports widget errors: {widget_console}"
    finally:
        try:
            page.screenshot(path=SCREENSHOTS / f"{stem}.png", full_page=True)
        finally:
            page.close()
            _shutdown_kernels(base, token)
    # the originals are untouched (the server only ever saw copies)
    assert json.loads((NOTEBOOKS / notebook).read_text("utf-8"))["cells"]
