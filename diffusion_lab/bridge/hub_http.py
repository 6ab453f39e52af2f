"""Every hub request of a load bounded in time, and hub errors explained: the HTTP side of
:mod:`diffusion_lab.bridge.hub`.

A hub that accepts the connection and never answers (a captive portal, a proxy) would hold ``from_pretrained`` for
minutes: diffusers passes no timeout and huggingface_hub's client has none. :func:`bounded_hub` gives every request
inside its block a connect and read bound and stops asking after the first timeout; :func:`explain_hub_error` turns
the error a load raised into (kind, message): gated, missing, or timeout.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator

__all__ = ["bounded_hub", "explain_hub_error"]


def _hub_endpoint() -> str:
    """The hub's base URL: ``$HF_ENDPOINT`` (a mirror) read now, else what huggingface_hub read at import."""
    from huggingface_hub import constants  # lazy: only a call that reaches the hub needs it

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _error_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every error behind it (``__cause__``, ``__context__``): diffusers wraps the hub's error in an
    ``OSError``, so the reason is found one or two links down."""
    chain: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        err = todo.pop(0)
        if err is not None and not any(err is seen for seen in chain):
            chain.append(err)
            todo += [err.__cause__, err.__context__]
    return chain


def _is_timeout(err: BaseException) -> bool:
    """A connect or read timeout: the socket's own (``TimeoutError``) or httpx's ``TimeoutException`` family."""
    return isinstance(err, TimeoutError) or any(c.__name__ == "TimeoutException" for c in type(err).__mro__)


def explain_hub_error(exc: BaseException, repo_id: str, timeout: float | None = None) -> tuple[str, str] | None:
    """(kind, message) for a hub error anywhere in ``exc``'s chain: kind "gated" (accept the licence, log in),
    "missing" (repository or revision not found: try the next id) or "timeout" (the hub did not answer); None for
    anything else."""
    from huggingface_hub import errors  # lazy: only a call that reaches the hub needs it

    chain = _error_chain(exc)
    if any(isinstance(err, errors.GatedRepoError) for err in chain):  # (a subclass of RepositoryNotFoundError)
        return "gated", (
            f"{repo_id} is gated: open https://huggingface.co/{repo_id} while logged in, accept the licence, then give "
            "this machine a token — `hf auth login` in a terminal, `export HF_TOKEN=...`, or on Kaggle a secret named "
            "HF_TOKEN (Add-ons → Secrets). Never paste a token into a notebook cell."
        )
    if any(isinstance(err, errors.RevisionNotFoundError) for err in chain):
        return "missing", f"{repo_id} has no such revision on the hub"
    if any(isinstance(err, errors.RepositoryNotFoundError) for err in chain):
        return "missing", f"{repo_id} was not found on the hub (deleted, renamed, or private)"
    if any(_is_timeout(err) for err in chain):
        within = f" within {timeout:g} s" if timeout is not None else " in time"
        return "timeout", (
            f"the hub ({_hub_endpoint()}) did not answer{within} while loading {repo_id} (a captive portal, a proxy "
            "or a slow network; set HF_HUB_OFFLINE=1 to skip the hub)"
        )
    return None


class _BoundedTransport:
    """An HTTP transport that gives every request a connect, read, write and pool timeout of at most ``seconds``,
    whatever the caller passed (huggingface_hub's ``model_info`` and ``repo_info`` pass ``timeout=None``: no limit).
    After the first timeout every later request of the same block fails at once: huggingface_hub retries a timed-out
    download five times with back-off (about 23 s of sleeping plus six timeouts), which would turn "seconds" into
    minutes."""

    def __init__(self, inner, seconds: float, timed_out: threading.Event):
        self.inner, self.seconds, self.timed_out = inner, seconds, timed_out

    def handle_request(self, request):
        if self.timed_out.is_set():  # a plain TimeoutError: huggingface_hub does not retry it
            raise TimeoutError(f"the hub did not answer within {self.seconds:g} s earlier; not asking again")
        given = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {
            key: self.seconds if given.get(key) is None else min(given[key], self.seconds)
            for key in ("connect", "read", "write", "pool")
        }
        try:
            return self.inner.handle_request(request)
        except Exception as err:
            if _is_timeout(err):
                self.timed_out.set()
            raise

    def close(self) -> None:
        self.inner.close()


@contextlib.contextmanager
def bounded_hub(timeout: float) -> Iterator[None]:
    """Inside the block every request huggingface_hub makes (diffusers' ``model_info``, ``resolve_revision``, file
    metadata and downloads) has a connect+read timeout of ``timeout`` seconds, and diffusers' ``model_info`` asks
    ``$HF_ENDPOINT`` as set now. Without it a hub that accepts the connection and never answers (a captive portal, a
    proxy) holds ``from_pretrained`` for minutes: diffusers passes no timeout and huggingface_hub's client has none.
    The previous client factory comes back afterwards."""
    from diffusers.pipelines import pipeline_utils  # lazy: only a call that reaches the hub needs it
    from huggingface_hub import HfApi, set_client_factory  # lazy: as above
    from huggingface_hub.utils import _http  # lazy: as above

    previous = _http._GLOBAL_CLIENT_FACTORY
    timed_out = threading.Event()  # shared by every client of this block: one timeout ends the block's requests

    def bounded_client():
        client = previous()
        client._transport = _BoundedTransport(client._transport, timeout, timed_out)  # direct connections
        client._mounts = {
            pattern: t and _BoundedTransport(t, timeout, timed_out) for pattern, t in client._mounts.items()
        }  # proxies
        return client

    original = getattr(pipeline_utils, "model_info", None)
    set_client_factory(bounded_client)
    if original is not None:
        pipeline_utils.model_info = functools.partial(HfApi(endpoint=_hub_endpoint()).model_info, timeout=timeout)
    try:
        yield
    finally:
        if original is not None:
            pipeline_utils.model_info = original
        set_client_factory(previous)
