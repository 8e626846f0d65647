"""Weights registry, short-name resolution and verified, resumable downloads — all without network.

The fetch functions are replaced by local copies (good, truncated, HTML, failing) so every path of
``partcatseg.weights.download`` runs offline.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import partcatseg.weights as W
from partcatseg.cli.download_weights import main as download_main
from conftest import REPO


@pytest.fixture
def wdir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "weights"
    monkeypatch.setenv("PARTCATSEG_WEIGHTS_DIR", str(d))
    monkeypatch.delenv("PARTCATSEG_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # conftest sets it; fetchers are fakes here
    return d


@pytest.fixture
def good_file(tmp_path) -> Path:
    path = tmp_path / "src" / "good.pth"
    path.parent.mkdir()
    torch.save({"model": {"w": torch.arange(1000.0)}}, path)
    return path


def fake_fetcher(source: Path, calls: list):
    def fetch(spec, target):
        calls.append((spec.name, Path(target)))
        W.copy_into_place(source, target)

    return fetch


# ------------------------------------------------------------------------------ registry
def test_registry_entries_match_the_official_readmes():
    voc, ade = W.WEIGHTS["partcatseg_voc"], W.WEIGHTS["partcatseg_ade"]
    assert voc.url == "https://drive.google.com/uc?id=1JUJjJQLMKE96H5SLNs4EMm4jiU6fPgRb"
    assert ade.url == "https://drive.google.com/uc?id=1MKQEk71o9Xvs4aBY_GLyGa1lWTaW10fv"
    assert (voc.filename, ade.filename) == ("partcatseg_voc.pth", "partcatseg_ade.pth")
    for name, file in [("catseg_base", "model_base.pth"), ("catseg_large", "model_large.pth"),
                       ("catseg_final_base", "model_final_base.pth")]:
        spec = W.WEIGHTS[name]
        assert spec.url == f"https://huggingface.co/hamacojr/CAT-Seg/resolve/main/{file}" and spec.filename == file
    assert not W.WEIGHTS["partcatseg_partimagenet"].available
    assert len({s.filename for s in W.WEIGHTS.values()}) == len(W.WEIGHTS)
    for spec in W.WEIGHTS.values():
        assert spec.name == [k for k, v in W.WEIGHTS.items() if v is spec][0]
        if spec.config:
            assert (REPO / spec.config).is_file(), spec.config
        assert spec.sha256 is None or len(spec.sha256) == 64


def test_readme_lists_every_registry_entry():
    readme = (REPO / "README.md").read_text()
    for line in W.weights_table().splitlines()[2:]:
        assert line in readme, f"README weights table is out of date; missing row:\n{line}"


# ------------------------------------------------------------------------------ resolution
def test_resolve_weights(wdir, tmp_path, good_file):
    assert W.resolve_weights("") == ""
    assert W.resolve_weights(str(good_file)) == str(good_file)
    with pytest.raises(W.WeightsNotFoundError) as err:
        W.resolve_weights("partcatseg_voc")
    msg = str(err.value)
    assert "python tools/download_weights.py partcatseg_voc" in msg
    assert f"target: {wdir / 'partcatseg_voc.pth'}" in msg
    assert "URL:    https://drive.google.com/uc?id=1JUJjJQLMKE96H5SLNs4EMm4jiU6fPgRb" in msg
    wdir.mkdir()
    (wdir / "partcatseg_voc.pth").write_bytes(good_file.read_bytes())
    (wdir / "model_final_base.pth").write_bytes(good_file.read_bytes())
    assert W.resolve_weights("partcatseg_voc") == str(wdir / "partcatseg_voc.pth")
    # official paths are found by their file name
    assert W.resolve_weights("pretrain_weights/model_final_base.pth") == str(wdir / "model_final_base.pth")
    assert W.resolve_weights("./weights/partcatseg_voc.pth") == str(wdir / "partcatseg_voc.pth")
    with pytest.raises(W.WeightsNotFoundError, match=r"'partcatseg_vocc' is neither a file nor a known weights name"):
        W.resolve_weights("partcatseg_vocc")
    with pytest.raises(W.WeightsNotFoundError, match=r"MODEL.WEIGHTS='/x/y.pth': no such file"):
        W.resolve_weights("/x/y.pth")


def test_weights_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("PARTCATSEG_WEIGHTS_DIR", str(tmp_path / "env"))
    assert W.weights_dir() == tmp_path / "env"
    assert W.weights_dir(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.delenv("PARTCATSEG_WEIGHTS_DIR")
    assert W.weights_dir() == REPO / "weights"  # running from the source checkout


# ------------------------------------------------------------------------------ download + verify
def test_download_verifies_records_and_reuses(wdir, good_file, monkeypatch):
    calls = []
    monkeypatch.setitem(W.FETCHERS, "google_drive", fake_fetcher(good_file, calls))
    path = W.download("partcatseg_voc", log=lambda s: None)
    assert path == wdir / "partcatseg_voc.pth" and path.read_bytes() == good_file.read_bytes()
    sha = hashlib.sha256(good_file.read_bytes()).hexdigest()
    recorded = json.loads((wdir / "checksums.json").read_text())
    assert recorded["partcatseg_voc.pth"] == {"sha256": sha, "size": good_file.stat().st_size, "name": "partcatseg_voc"}
    assert W.download("partcatseg_voc", log=lambda s: None) == path
    assert len(calls) == 1  # a verified file is not fetched again
    # a file that changed after it was recorded fails, is quarantined and fetched again
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    messages = []
    W.download("partcatseg_voc", log=messages.append)
    assert len(calls) == 2 and path.read_bytes() == good_file.read_bytes()
    assert (wdir / "partcatseg_voc.pth.corrupt").is_file()
    assert any("recorded in" in m and "fetching it again" in m for m in messages)
    W.download("partcatseg_voc", force=True, log=lambda s: None)  # --force keeps the old file aside
    assert len(calls) == 3 and (wdir / "partcatseg_voc.pth.previous").is_file()


def test_known_hash_mismatch_never_passes(wdir, good_file, tmp_path, monkeypatch):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good_file.read_bytes()[:200])
    spec = replace(W.WEIGHTS["catseg_base"], sha256=hashlib.sha256(good_file.read_bytes()).hexdigest())
    monkeypatch.setitem(W.WEIGHTS, "catseg_base", spec)
    calls = []
    monkeypatch.setitem(W.FETCHERS, "huggingface", fake_fetcher(truncated, calls))
    with pytest.raises(W.WeightsVerificationError, match=r"model_base.pth: SHA-256 [0-9a-f]{64}, expected " + spec.sha256):
        W.download("catseg_base", log=lambda s: None)
    assert not (wdir / "model_base.pth").exists() and (wdir / "model_base.pth.corrupt").is_file()
    assert not (wdir / "checksums.json").exists()  # a failed file is never recorded
    # with the right bytes the same spec passes
    monkeypatch.setitem(W.FETCHERS, "huggingface", fake_fetcher(good_file, calls))
    assert W.download("catseg_base", log=lambda s: None).read_bytes() == good_file.read_bytes()
    # and a known size is checked before hashing
    sized = replace(spec, size=123)
    with pytest.raises(W.WeightsVerificationError, match=f"size {good_file.stat().st_size} bytes, expected 123"):
        W.verify_file(sized, wdir / "model_base.pth")


def test_html_page_is_rejected(wdir, tmp_path, monkeypatch):
    page = tmp_path / "quota.html"
    page.write_text("<!DOCTYPE html><html><body>Google Drive - Quota exceeded</body></html>")
    monkeypatch.setitem(W.FETCHERS, "google_drive", fake_fetcher(page, []))
    with pytest.raises(W.WeightsVerificationError, match="HTML/XML page, not a checkpoint"):
        W.download("partcatseg_ade", log=lambda s: None)
    assert (wdir / "partcatseg_ade.pth.corrupt").is_file()


def test_offline_and_network_failure_print_manual_instructions(wdir, monkeypatch):
    calls = []
    monkeypatch.setitem(W.FETCHERS, "huggingface", lambda spec, target: calls.append(1))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(W.WeightsDownloadError) as err:
        W.download("catseg_final_base", log=lambda s: None)
    assert calls == []
    assert "https://huggingface.co/hamacojr/CAT-Seg/resolve/main/model_final_base.pth" in str(err.value)
    assert f"target: {wdir / 'model_final_base.pth'}" in str(err.value)
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def unreachable(spec, target):
        raise ConnectionError("Name or service not known")

    monkeypatch.setitem(W.FETCHERS, "huggingface", unreachable)
    with pytest.raises(W.WeightsDownloadError, match=r"download failed \(ConnectionError: Name or service not known\)"):
        W.download("catseg_final_base", log=lambda s: None)
    with pytest.raises(W.WeightsDownloadError, match="not released: the part-catseg README lists it as TBA"):
        W.download("partcatseg_partimagenet", log=lambda s: None)


def test_fetchers_use_resumable_clients(tmp_path, monkeypatch):
    import gdown
    import huggingface_hub

    seen = {}

    def fake_gdown(**kwargs):
        seen["gdown"] = kwargs
        Path(kwargs["output"]).write_bytes(b"PK\x03\x04")
        return kwargs["output"]

    def fake_hf(**kwargs):
        seen["hf"] = kwargs
        out = Path(kwargs["local_dir"]) / kwargs["filename"]
        out.write_bytes(b"x")
        return str(out)

    monkeypatch.setattr(gdown, "download", fake_gdown)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf)
    probed = []
    monkeypatch.setattr(W, "_unreachable", lambda url: probed.append(url))  # as if the hosts answered
    W.fetch_google_drive(W.WEIGHTS["partcatseg_voc"], tmp_path / "partcatseg_voc.pth")
    assert seen["gdown"]["resume"] is True and seen["gdown"]["id"] == "1JUJjJQLMKE96H5SLNs4EMm4jiU6fPgRb"
    W.fetch_huggingface(W.WEIGHTS["dinov2_vits14"], tmp_path / "dinov2_vits14_lvd142m.safetensors")
    assert seen["hf"]["repo_id"] == "timm/vit_small_patch14_dinov2.lvd142m" and seen["hf"]["local_dir"] == str(tmp_path)
    assert (tmp_path / "dinov2_vits14_lvd142m.safetensors").is_file() and not (tmp_path / "model.safetensors").exists()
    assert [u.split("/")[2] for u in probed] == ["drive.google.com", "huggingface.co"]  # one quick probe each


def test_safetensors_format_check(tmp_path):
    spec = W.WEIGHTS["dinov2_vits14"]
    header = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    good = tmp_path / "good.safetensors"
    good.write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0\0\0")
    assert len(W.verify_file(spec, good, record=False)) == 64
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(W.WeightsVerificationError, match="no safetensors header"):
        W.verify_file(spec, bad, record=False)


# ------------------------------------------------------------------------------ tool
def test_download_tool(wdir, good_file, tmp_path, monkeypatch, capsys):
    assert download_main(["--list"]) == 0
    out = capsys.readouterr().out
    assert f"weights directory: {wdir}" in out and "partcatseg_voc" in out and "not released" in out
    assert download_main(["partcatseg_vocc"]) == 2
    assert "unknown name(s) ['partcatseg_vocc']" in capsys.readouterr().err
    assert download_main(["partcatseg_voc", "--offline"]) == 1
    assert f"target: {wdir / 'partcatseg_voc.pth'}" in capsys.readouterr().err
    assert download_main(["partcatseg_voc", "--from-file", str(good_file)]) == 0
    assert (wdir / "partcatseg_voc.pth").read_bytes() == good_file.read_bytes()
    assert download_main(["--verify"]) == 0 and "partcatseg_voc: ok" in capsys.readouterr().out
    with open(wdir / "partcatseg_voc.pth", "ab") as f:
        f.write(b"tampered")
    assert download_main(["--verify"]) == 1
    assert "partcatseg_voc: FAILED" in capsys.readouterr().err
    assert (wdir / "partcatseg_voc.pth.corrupt").is_file() and not (wdir / "partcatseg_voc.pth").exists()
