"""Progress bars whose saved notebook output shows the finished bar.

``tqdm.auto`` draws an ipywidgets bar in a notebook. Its plain-text form (what GitHub, nbviewer and a notebook
opened without the widget state show) is computed once, when the bar is first displayed, so a notebook saved
after a long training run shows ``training:   0%|          | 0/1500``. :class:`tqdm` here is ``tqdm.auto``'s bar,
displayed under a display id and redrawn on ``close()``: the saved output then reads ``100%|██████████| 1500/1500
[01:33<00:00, ...]``. Outside a notebook it is ``tqdm.auto``'s bar unchanged.

    >>> for step in tqdm(range(3), desc="demo", disable=True):
    ...     pass
"""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm as _auto_tqdm

__all__ = ["tqdm"]

try:  # the widget bar exists only where ipywidgets and IPython do
    from tqdm.notebook import tqdm_notebook as _notebook_tqdm
except ImportError:  # pragma: no cover - tqdm.notebook imports IPython lazily; kept for older tqdm releases
    _notebook_tqdm = None

_IN_NOTEBOOK = _notebook_tqdm is not None and issubclass(_auto_tqdm, _notebook_tqdm)


class tqdm(_auto_tqdm):  # noqa: N801 - the name every tqdm user expects
    """``tqdm.auto.tqdm`` whose notebook widget is redrawn when it closes, so a saved notebook shows the last state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._handle = None
        if not _IN_NOTEBOOK or kwargs.get("disable") or kwargs.get("delay", 0) > 0:
            super().__init__(*args, **kwargs)
            return
        from IPython.display import display  # lazy: IPython exists only where the notebook bar does

        kwargs["display"] = False  # tqdm.notebook: do not display yet; we display under an id below
        super().__init__(*args, **kwargs)
        if getattr(self, "container", None) is not None:
            self._handle = display(self.container, display_id=True)
            self.displayed = True

    def close(self) -> None:
        super().close()
        if self._handle is not None:
            self._handle.update(self.container)  # re-sends the plain-text form: the finished bar
            self._handle = None
