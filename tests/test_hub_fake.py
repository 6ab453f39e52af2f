"""bridge.load_pipeline and check_environment against a fake hub on 127.0.0.1 (issue 21): a hub that accepts and never
answers costs seconds, not minutes; a 404 moves through the card's alternatives; a 401 "gated" reply prints the licence
steps (``strict=True`` raises). ``HF_ENDPOINT`` points at the fake hub; nothing leaves this machine."""

from __future__ import annotations

import http.server
import threading
import time

import huggingface_hub.constants
import huggingface_hub.hf_api
import pytest

from diffusion_lab import bridge
from diffusion_lab.bridge import hub


class _FakeHub(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mode: str):
        self.mode, self.paths, self.release = mode, [], threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass

    def _reply(self) -> None:
        server: _FakeHub = self.server  # type: ignore[assignment]
        server.paths.append(self.path)
        if server.mode == "silent":  # a captive portal: the connection is accepted, no answer ever comes
            server.release.wait(15)
            return
        status, code = {"missing": (404, "RepoNotFound"), "gated": (401, "GatedRepo")}[server.mode]
        body = b'{"error": "simulated"}'
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", "simulated")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = _reply


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    servers = []

    def start(mode: str) -> _FakeHub:
        server = _FakeHub(mode)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        for var in (
            "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE",
            "DIFFUSERS_OFFLINE",
            "HF_TOKEN",
            "HUGGING_FACE_HUB_TOKEN",
        ):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        # huggingface_hub reads HF_ENDPOINT and its cache folder once, at import: point those at the fake hub too
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", server.url)
        template = server.url + "/{repo_id}/resolve/{revision}/{filename}"  # single files (a model's from_pretrained)
        monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", server.url)  # diffusers' resolve_revision
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hub, "find_token", lambda: (None, None))
        return server

    yield start
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()


def _real_env() -> bridge.Environment:
    return bridge.Environment("cpu", None, None, True, None, True, ("test",))


def test_silent_hub_falls_back_within_seconds(fake_hub, tmp_path, capsys):
    server = fake_hub("silent")
    start = time.monotonic()
    pipe = bridge.load_pipeline("sd15", _real_env(), cache_dir=tmp_path / "tiny", hub_timeout=1.0)
    assert time.monotonic() - start < 10
    assert bridge.is_tiny(pipe) and server.paths  # the fake hub was asked, then given up on
    text = capsys.readouterr().out
    assert "did not answer within 1 s" in text and "TINY" in text


def test_missing_repository_tries_the_alternatives_in_order(fake_hub, tmp_path, capsys):
    server = fake_hub("missing")
    card = bridge.MODELS["sd15"]
    pipe = bridge.load_pipeline("sd15", _real_env(), cache_dir=tmp_path / "tiny", hub_timeout=5.0)
    assert bridge.is_tiny(pipe)
    asked = [next((rid for rid in [card.repo_id, *card.alternatives] if rid in p), None) for p in server.paths]
    assert [rid for i, rid in enumerate(asked) if rid and rid not in asked[:i]] == [card.repo_id, *card.alternatives]
    text = capsys.readouterr().out
    assert text.count("was not found") == 1 + len(card.alternatives)
    assert "none of" in text and "TINY" in text


def test_gated_repository_prints_the_licence_steps(fake_hub, tmp_path, capsys):
    fake_hub("gated")
    repo = bridge.MODELS["sd3-medium"].repo_id
    with pytest.raises(PermissionError, match=f"{repo} is gated.*accept the licence.*hf auth login"):
        bridge.load_pipeline("sd3-medium", _real_env(), cache_dir=tmp_path / "tiny", hub_timeout=5.0, strict=True)
    pipe = bridge.load_pipeline("sd15", _real_env(), cache_dir=tmp_path / "tiny", hub_timeout=5.0)
    assert bridge.is_tiny(pipe)
    text = capsys.readouterr().out
    assert "accept the licence" in text and "TINY" in text


def test_environment_probes_the_hf_endpoint_host(monkeypatch):
    monkeypatch.setenv("DIFFUSION_LAB_SMOKE", "0")
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a mirror; port 9 refuses
    probed = []
    monkeypatch.setattr(hub, "_hub_reachable", lambda timeout, host: probed.append(host) or (False, "refused"))
    bridge.check_environment(hub_timeout=1.0, allow_cpu=True)
    assert probed == [("127.0.0.1", 9)]
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example")
    bridge.check_environment(hub_timeout=1.0, allow_cpu=True)
    assert probed[-1] == ("hf-mirror.example", 443)


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"])
def test_environment_offline_never_probes(monkeypatch, var):
    monkeypatch.setenv("DIFFUSION_LAB_SMOKE", "0")
    for other in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(var, "1")
    monkeypatch.setattr(hub, "_hub_reachable", lambda *a: pytest.fail("the network was touched"))
    env = bridge.check_environment(allow_cpu=True)
    assert not env.hub and not env.use_real and f"{var}=1" in str(env) and "offline" in str(env)


def test_hub_timeout_is_checked(tmp_path):
    with pytest.raises(TypeError, match="hub_timeout must be a number"):
        bridge.load_pipeline("sd15", _real_env(), cache_dir=tmp_path, hub_timeout="5")
    with pytest.raises(ValueError, match="hub_timeout must be positive"):
        bridge.load_pipeline("sd15", _real_env(), cache_dir=tmp_path, hub_timeout=0)


def test_wrapped_hub_errors_are_found_down_the_chain():
    """diffusers 0.42 raises ``OSError(...) from <the hub's error>``: the reason is read from the chain."""
    import httpx2  # lazy: huggingface_hub's HTTP client, present wherever huggingface_hub is

    try:
        try:
            raise httpx2.ReadTimeout("simulated")
        except httpx2.ReadTimeout as inner:
            raise OSError("Cannot load model x/y") from inner
    except OSError as wrapped:
        kind, message = hub.explain_hub_error(wrapped, "x/y", 2.0)
    assert kind == "timeout" and "did not answer within 2 s" in message
    assert hub.explain_hub_error(OSError("disk full"), "x/y") is None


@pytest.mark.parametrize(
    "damage",
    ["truncated-weights", "bad-json", "no-index"],
)
def test_a_damaged_tiny_cache_is_rebuilt_and_said_so(tmp_path, capsys, damage):
    """A cached tiny pipeline that no longer loads (a truncated weights file, a broken JSON, a missing index) is
    detected, removed, rebuilt, and the message says so; the rebuilt copy loads."""
    env = bridge.Environment("cpu", None, None, False, None, False, ("test: tiny only",))
    bridge.load_pipeline("sd15", env, cache_dir=tmp_path)
    folder = bridge.tiny_pipeline_path("sd15", tmp_path)
    if damage == "truncated-weights":
        weights = next(folder.glob("unet/*.safetensors"))
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "bad-json":
        (folder / "unet" / "config.json").write_text('{"in_channels": 4,')
    else:
        (folder / "model_index.json").unlink()
    capsys.readouterr()
    pipe = bridge.load_pipeline("sd15", env, cache_dir=tmp_path)
    out = capsys.readouterr().out
    assert "rebuilding it" in out and "loaded the TINY stand-in" in out
    assert bridge.is_tiny(pipe)
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == [folder.name]  # nothing left aside


@pytest.mark.parametrize("mode", ["silent", "missing", "gated"])
def test_real_controlnet_is_bounded_and_explained(fake_hub, capsys, mode):
    """The family's ControlNet loader (the real-path ``ControlNetModel.from_pretrained``) is bounded as
    load_pipeline is: a silent hub gives up within seconds and stops the search; 404 and 401 say why per id."""
    from diffusion_lab.bridge import family

    server = fake_hub(mode)
    start = time.monotonic()
    assert family._real_controlnet(["org/cn-a", "org/cn-b"], _real_env(), hub_timeout=1.0) is None
    assert time.monotonic() - start < 10
    text = capsys.readouterr().out
    if mode == "silent":
        assert "did not answer within 1 s" in text and "cn-b" not in text
    elif mode == "missing":
        assert "org/cn-a was not found" in text and "org/cn-b was not found" in text
    else:
        assert "org/cn-a is gated" in text and "accept the licence" in text
    assert server.paths and all("org/cn-" in path for path in server.paths)  # the fake hub was asked, no other host


def test_sdxl_fp16_fix_vae_is_bounded(fake_hub, capsys):
    """The SDXL LoRA recipe's fp16-fix VAE download is bounded too: a silent hub keeps the pipeline's VAE."""
    from types import SimpleNamespace

    from diffusion_lab.bridge import lora_sdxl

    fake_hub("silent")
    own_vae = object()
    pipe = SimpleNamespace(vae=own_vae, unet=SimpleNamespace(dtype=None))
    start = time.monotonic()
    assert lora_sdxl._fp16_fix_vae(pipe, hub_timeout=1.0) is own_vae
    assert time.monotonic() - start < 10
    assert "keeping the pipeline's VAE" in capsys.readouterr().out
