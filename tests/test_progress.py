"""The library's progress bar: tqdm.auto's, and in a notebook the saved output shows the finished bar."""

from __future__ import annotations

import io

import nbformat
from nbclient import NotebookClient

from diffusion_lab.utils.progress import tqdm


def test_outside_a_notebook_it_is_tqdm_auto():
    seen = [i for i in tqdm(range(5), desc="demo", disable=True)]
    assert seen == [0, 1, 2, 3, 4]
    out = io.StringIO()
    bar = tqdm(total=3, desc="demo", file=out)
    bar.update(3)
    bar.close()
    assert bar.n == 3 and "3/3" in out.getvalue()


def test_a_saved_notebook_shows_the_finished_bar_not_zero_percent():
    code = (
        "from diffusion_lab.utils.progress import tqdm\n"
        "for _ in tqdm(range(40), desc='training', mininterval=60):\n"  # no redraw in the loop: only close() updates
        "    pass\n"
        "bar = tqdm(total=7, desc='manual')\n"
        "bar.update(7)\n"
        "bar.close()"
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    NotebookClient(nb, timeout=100, kernel_name="python3").execute()
    shown = ["".join(o["data"]["text/plain"]) for o in nb.cells[0].outputs if "text/plain" in o.get("data", {})]
    assert len(shown) == 2, shown
    assert "100%" in shown[0] and "40/40" in shown[0], shown[0]
    assert "100%" in shown[1] and "7/7" in shown[1], shown[1]
