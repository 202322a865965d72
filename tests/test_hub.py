"""``--init`` by URL (cached download, checksum) and by timm hub name (mae/models/hub.py), against a local HTTP
server on 127.0.0.1 and a hand-made Hugging Face cache: nothing leaves the machine."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest
import torch

from mae.cli import main as cli
from mae.errors import UserError
from mae.models import create_mae, hub, resolve_init
from mae.models.interop import timm_model_name
from mae.stages import classification
from mae.utils import io
from tests.test_eval import MODEL, _write_dataset


class _Handler(http.server.SimpleHTTPRequestHandler):
    gets: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).gets.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, served folder, list of GET paths): a threaded HTTP server on 127.0.0.1."""
    root = tmp_path_factory.mktemp("www")
    torch.manual_seed(0)
    model = create_mae(MODEL, decoder_depth=1, target="norm_pixel")
    torch.save(
        {"model": model.state_dict(), "config": {"model": MODEL, "target": "norm_pixel"}}, root / "checkpoint.pt"
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root, _Handler.gets
    server.shutdown()
    server.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(io.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _downloads(cache: Path) -> list[str]:
    folder = cache / "downloads"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _closed_port() -> int:
    """A port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv(io.CACHE_ENV, str(tmp_path / "c"))
    assert io.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(io.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert io.cache_dir() == tmp_path / "xdg" / "mae-study"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert io.cache_dir() == Path.home() / ".cache" / "mae-study"


def test_download_is_cached(served, cache):
    base, root, gets = served
    url = f"{base}/checkpoint.pt"
    before = len(gets)
    path = resolve_init(url)
    assert path.parent == cache / "downloads" and path.name.endswith("-checkpoint.pt")
    assert path.read_bytes() == (root / "checkpoint.pt").read_bytes() and len(gets) == before + 1
    assert resolve_init(url) == path and len(gets) == before + 1  # a cache hit does not download
    # with the right checksum: verified against the cached copy, still no download
    assert resolve_init(f"{url}#sha256={_sha(root / 'checkpoint.pt').upper()}") == path and len(gets) == before + 1
    assert _downloads(cache) == [path.name]  # no temp file left


def test_wrong_checksum_leaves_no_file(served, cache):
    base, root, gets = served
    url = f"{base}/checkpoint.pt"
    with pytest.raises(UserError, match=r"--init: http://127\.0\.0\.1:\d+/checkpoint\.pt: sha256 [0-9a-f]{64} does"):
        resolve_init(f"{url}#sha256={'0' * 64}")
    assert _downloads(cache) == []
    # a cached copy that does not match is fetched again and checked again: still an error, no file kept
    resolve_init(url)
    before = len(gets)
    with pytest.raises(UserError, match="does not match"):
        resolve_init(f"{url}#sha256={'a' * 64}")
    assert len(gets) == before + 1 and _downloads(cache) == []
    with pytest.raises(UserError, match=r"bad fragment '#md5=00'"):
        resolve_init(f"{url}#md5=00")


def test_unreachable_and_missing_urls_are_one_line(served, cache):
    base, _, _ = served
    url = f"http://127.0.0.1:{_closed_port()}/mae_pretrain_vit_base.pth"
    with pytest.raises(UserError) as err:
        resolve_init(url)
    assert str(err.value).startswith(f"--init: cannot download {url}: ") and "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"cannot download http://127\.0\.0\.1:\d+/nope\.pth: HTTP 404"):
        resolve_init(f"{base}/nope.pth")
    assert _downloads(cache) == []
    with pytest.raises(UserError, match="unsupported URL scheme 'ftp'"):
        resolve_init("ftp://example.org/x.pth")
    with pytest.raises(UserError, match="checkpoint file 'nope.pt' does not exist"):
        resolve_init("nope.pt")


def test_evaluation_and_visualize_take_a_url(served, cache, tmp_path, capsys):
    """`mae knn --init URL`: the encoder is loaded from the cached download; the metrics record the URL."""
    base, root, _ = served
    url = f"{base}/checkpoint.pt#sha256={_sha(root / 'checkpoint.pt')}"
    data = _write_dataset(tmp_path / "data", n_train=16, n_val=8)
    assert classification.resolve_model_name(None, url) == MODEL
    assert cli(["knn", "--data", str(data), "--out", str(tmp_path / "knn"), "--init", url, "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "knn" / "metrics.json").read_text())
    assert metrics["init_path"] == url and metrics["model"] == MODEL and metrics["init_report"]["loaded"] > 0
    assert cli(["visualize", "--init", url, "--data", str(data), "--num", "2", "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig.png").is_file() and (tmp_path / "fig.pdf").is_file()
    capsys.readouterr()
    bad = f"http://127.0.0.1:{_closed_port()}/ckpt.pt"
    assert cli(["knn", "--data", str(data), "--out", str(tmp_path / "k2"), "--init", bad, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --init: cannot download {bad}") and "\n" not in err


# -------------------------------------------------------------------------------------------------- timm hub
TIMM_NAME = "test_vit.r160_in1k"  # timm's tiny test ViT: its weights come from the (hand-made) HF cache


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """A Hugging Face hub that does not answer (offline mode not set: the hub module detects it) with an empty
    cache; ``put(weights)`` stores weights for TIMM_NAME."""
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    hub._timm_state.cache_clear()

    def put(state: dict) -> None:
        from safetensors.torch import save_file

        repo = tmp_path / "hf" / f"models--timm--{TIMM_NAME}"
        commit = "0" * 40
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
        save_file({k: v.contiguous() for k, v in state.items()}, repo / "snapshots" / commit / "model.safetensors")

    yield put
    hub._timm_state.cache_clear()


@pytest.mark.timeout(30)  # without the reachability check the hub client retries for ~45 s
def test_timm_hub_weights(hf_cache):
    import timm
    from huggingface_hub import constants

    with pytest.raises(UserError) as err:  # offline, nothing cached: one line naming the spec
        resolve_init(f"timm:{TIMM_NAME}")
    assert f"--init: cannot load timm:{TIMM_NAME}" in str(err.value) and "\n" not in str(err.value)
    torch.manual_seed(1)
    weights = timm.create_model("test_vit", num_classes=1000).state_dict()
    hf_cache(weights)
    ckpt = resolve_init(f"timm:{TIMM_NAME}")
    assert "config" not in ckpt  # not one of our architectures: the model name is not known
    state = ckpt["model"]
    assert not any(k.startswith("head.") for k in state)  # the classifier is dropped
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "norm.weight"):
        torch.testing.assert_close(state[key], weights[key])
    with pytest.raises(UserError, match="does not record its model name"):
        classification.resolve_model_name(None, f"timm:{TIMM_NAME}")
    assert constants.HF_HUB_OFFLINE is False  # offline mode only while timm fetched


def test_timm_names():
    assert timm_model_name("vit_base_patch16_224.mae") == "mae_vit_base_patch16"
    assert timm_model_name("vit_huge_patch14_224.mae") == "mae_vit_huge_patch14"
    assert timm_model_name("resnet50.a1_in1k") is None
    with pytest.raises(UserError, match="timm has no model 'vit_nope'"):
        resolve_init("timm:vit_nope.mae")
    with pytest.raises(
        UserError,
        match=r"no pretrained weights 'vit_base_patch16_224\.nope' \(MAE ones: .*"
        r"vit_base_patch16_224\.mae",
    ):
        resolve_init("timm:vit_base_patch16_224.nope")
