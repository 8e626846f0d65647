"""The web app (issue 14): its backend, the page through ``gradio_client``, and the page in a real browser.

The model is the tiny PartCATSeg of ``TINY_OPTS`` with seeded weights, converted into a pretrained folder
(its predictions are noise; the tests check what the page shows and writes). The server runs as
``python -m partcatseg.cli.app`` on a free port of 127.0.0.1. The browser test drives headless Chromium
with Selenium (Debian's ``chromium`` + ``chromium-driver``) and skips, saying why, when they are absent.
``PARTCATSEG_APP_SCREENSHOT=docs/app_screenshot.png`` saves the browser's view of the result;
``PARTCATSEG_APP_TEST_MODEL=<model>`` serves another model to the browser test (e.g. the toy model of
``make demo``, output/toy_demo/model_final.pth, for a meaningful screenshot).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, TINY_OPTS
from weights_rule import rule_state_dict

from partcatseg.cli.app_backend import (
    CUSTOM,
    MODEL_OWN,
    AppBackend,
    ModelChoice,
    discover_models,
    ensure_toy_model,
    hierarchy,
)

skimage_data = pytest.importorskip("skimage.data")
SK_DATA = Path(skimage_data.__file__).parent
CAT = SK_DATA / "chelsea.png"
CUSTOM_TEXT = "teapot: spout, lid; giraffe: neck, ossicone"
CUSTOM_CLASSES = ["teapot's spout", "teapot's lid", "giraffe's neck", "giraffe's ossicone"]
TOY_TEXT = "robot: head, torso, arm, leg; house: roof, wall, door, window; tree: crown, trunk"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """The tiny PartCATSeg with seeded weights as a pretrained folder."""
    from partcatseg.config import setup_cfg
    from partcatseg.inference.hub import convert_checkpoint
    from partcatseg.modeling import build_model

    tmp = tmp_path_factory.mktemp("tiny_model")
    config = str(REPO / "configs/zero_shot/partcatseg_voc.yaml")
    model = build_model(setup_cfg(config, TINY_OPTS))
    torch.save({"model": rule_state_dict(model)}, tmp / "tiny.pth")
    convert_checkpoint(str(tmp / "tiny.pth"), tmp / "tiny_partcatseg", config_file=config, opts=TINY_OPTS)
    return tmp / "tiny_partcatseg"


@pytest.fixture(scope="module")
def backend(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("app_out")
    choice = ModelChoice(label="tiny", spec=str(tiny_folder), kind="folder")
    return AppBackend([choice], output_dir=out, device="cpu",
                      opts=["MODEL.TEXT_CACHE_DIR", str(out / "text_cache")], max_side=256)


# ------------------------------------------------------------------------------ backend (no web server)
def test_backend_segments_with_a_custom_vocabulary_and_writes_the_demo_files(backend):
    from partcatseg.inference import Predictor

    result = backend.segment(str(CAT), "tiny", CUSTOM, CUSTOM_TEXT, "Pred-All")
    summary = result.summary
    assert summary["vocabulary_classes"] == CUSTOM_CLASSES and result.class_names == CUSTOM_CLASSES
    assert (summary["height"], summary["width"]) == (300, 451) and summary["predicted_at"] == {"height": 170, "width": 256}
    labels_png, json_file = map(Path, result.files)
    assert labels_png.name == "chelsea_labels.png" and json_file.name == "chelsea.json"
    written = json.loads(json_file.read_text())
    assert written["classes"] == summary["classes"] and written["legend"] == summary["legend"]
    assert set(written["latency_seconds"]) >= {"total", "model", "text", "files"}
    labels = np.array(Image.open(labels_png))
    assert labels.shape == (300, 451) and labels.dtype == np.uint8
    np.testing.assert_array_equal(np.where(result.labels < 0, 255, result.labels), labels)
    # the same prediction as a Predictor on the same model gives (the model loads once)
    predictor = backend.predictor("tiny")
    assert backend.predictor("tiny") is predictor
    reference = Predictor(model=predictor.model, objects=CUSTOM_TEXT)(str(CAT), max_side=256)
    np.testing.assert_array_equal(reference.labels, result.labels)
    # areas: every pixel is in one class or background; the hierarchy sums its parts
    total = sum(c["pixels"] for c in summary["classes"]) + summary["unlabeled_pixels"]
    assert total == 300 * 451
    for group in result.groups:
        assert group["pixels"] == sum(p["pixels"] for p in group["parts"])
        assert group["object"] in ("teapot", "giraffe")
    assert "model" in result.latency_text() and "for this request" in result.latency_text()
    second = backend.segment(str(CAT), "tiny", CUSTOM, CUSTOM_TEXT, "Pred-All")
    assert second.timings["text_cached"] and "in memory" in second.latency_text()


def test_parts_switch_on_and_off_without_running_the_model(backend, monkeypatch):
    result = backend.segment(str(CAT), "tiny", CUSTOM, CUSTOM_TEXT, "Pred-All")
    monkeypatch.setattr(backend.predictor("tiny").model, "forward", lambda *a, **k: pytest.fail("model ran"))
    full = backend.render(result, None)
    np.testing.assert_array_equal(full, result.overlay)
    nothing = backend.render(result, [])
    np.testing.assert_array_equal(nothing, result.image)  # nothing painted, no outline, no legend
    first = result.present[0]
    only = backend.render(result, [first])
    hidden = result.labels != CUSTOM_CLASSES.index(first)
    h, w = result.image.shape[:2]
    inside = only[:h, :w]
    assert (inside[hidden & (result.labels >= 0)] == result.image[hidden & (result.labels >= 0)]).mean() > 0.95


def test_oracle_obj_and_dataset_vocabularies(backend):
    result = backend.segment(str(CAT), "tiny", CUSTOM, CUSTOM_TEXT, "Oracle-Obj", "giraffe", no_background=True)
    assert {c["name"] for c in result.summary["classes"]} <= {"giraffe's neck", "giraffe's ossicone"}
    assert result.summary["unlabeled_pixels"] == 0 and result.summary["object"] == "giraffe"
    assert backend.objects("tiny", CUSTOM, CUSTOM_TEXT) == ["giraffe", "teapot"]
    assert backend.objects("tiny", CUSTOM, "teapot: spout; giraffe") == []  # half typed
    assert "pascal_part_116" in backend.vocabulary_sources("tiny") and "ade150" not in backend.vocabulary_sources("tiny")
    toy = backend.segment(str(CAT), "tiny", "toy_part", "", "Pred-All")
    assert toy.summary["vocabulary"] == "toy_part" and len(toy.summary["vocabulary_classes"]) == 16
    own = backend.segment(str(CAT), "tiny", MODEL_OWN, "", "Pred-All")
    assert own.summary["num_vocabulary_classes"] == 116
    from partcatseg.vocab import VocabularyError

    with pytest.raises(VocabularyError, match="has no ':'"):
        backend.segment(str(CAT), "tiny", CUSTOM, "cat head", "Pred-All")
    with pytest.raises(VocabularyError, match="pick the object"):
        backend.segment(str(CAT), "tiny", CUSTOM, CUSTOM_TEXT, "Oracle-Obj", None)
    with pytest.raises(VocabularyError, match="upload an image"):
        backend.segment(None, "tiny", CUSTOM, CUSTOM_TEXT, "Pred-All")


def test_hierarchy_groups_parts_under_objects():
    summary = {"classes": [
        {"name": "cat's head", "pixels": 30, "area_fraction": 0.3, "mean_score": 0.5},
        {"name": "dog's leg", "pixels": 25, "area_fraction": 0.25, "mean_score": 0.5},
        {"name": "cat's tail", "pixels": 20, "area_fraction": 0.2, "mean_score": 0.5},
    ]}
    groups = hierarchy(summary, has_parts=True)
    assert [(g["object"], g["pixels"], [p["part"] for p in g["parts"]]) for g in groups] == [
        ("cat", 50, ["head", "tail"]), ("dog", 25, ["leg"])]
    assert [g["object"] for g in hierarchy(summary | {"classes": summary["classes"][:1]}, has_parts=False)] == ["cat's head"]


def test_model_discovery(tmp_path, monkeypatch, tiny_folder):
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setenv("PARTCATSEG_WEIGHTS_DIR", str(weights))
    toy = tmp_path / "toy"
    assert discover_models(toy_output=toy) == []
    (weights / "partcatseg_voc.pth").write_bytes(b"x")  # present on disk (not loaded here)
    shutil.copytree(tiny_folder, weights / "my_model")
    toy.mkdir()
    (toy / "model_final.pth").write_bytes(b"x")
    found = discover_models(["org/repo"], toy_output=toy)
    assert [(c.kind, c.spec) for c in found] == [
        ("given", "org/repo"), ("released", "partcatseg_voc"), ("folder", str(weights / "my_model")),
        ("toy", str(toy / "model_final.pth"))]
    assert found[-1].toy and not found[0].toy
    assert [c.kind for c in discover_models(toy_output=toy, include_toy=False)] == ["released", "folder"]


@pytest.mark.slow
def test_toy_model_is_trained_when_missing(tmp_path, small_toy_root):
    lines = []
    ckpt = ensure_toy_model(tmp_path / "toy", dataset_root=small_toy_root,
                            opts=["SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "100",
                                  "MODEL.TEXT_CACHE_DIR", str(tmp_path / "tc")], log=lines.append)
    assert ckpt == tmp_path / "toy" / "model_final.pth" and ckpt.is_file()
    assert any("training it now (3 iterations" in line for line in lines)
    assert any("toy model trained" in line for line in lines), lines
    assert ensure_toy_model(tmp_path / "toy", log=lines.append) == ckpt  # present: nothing to do
    (choice,) = discover_models(toy_output=tmp_path / "toy", models_dirs=[])
    assert choice.toy and choice.kind == "toy"
    backend = AppBackend([choice], output_dir=tmp_path / "out", device="cpu",
                         opts=["MODEL.TEXT_CACHE_DIR", str(tmp_path / "tc")])
    image = next((small_toy_root / "ToyPart" / "images" / "val").iterdir())
    result = backend.segment(str(image), None, CUSTOM, TOY_TEXT, "Pred-All")
    assert result.summary["vocabulary_classes"][0] == "robot's head"


def test_app_command_line_errors(tmp_path, monkeypatch, capsys):
    from partcatseg.cli.app import build_parser, main

    defaults = build_parser().parse_args([])
    assert (defaults.host, defaults.port, defaults.device) == ("127.0.0.1", 7860, "auto")  # this machine only

    monkeypatch.setenv("PARTCATSEG_WEIGHTS_DIR", str(tmp_path))
    assert main(["--no-toy", "--toy-output", str(tmp_path / "none")]) == 2
    assert "no model to serve" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the served page
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m partcatseg.cli.app`` in a subprocess, on 127.0.0.1."""

    def __init__(self, model: str, tmp: Path):
        pytest.importorskip("gradio")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = dict(os.environ, PARTCATSEG_WEIGHTS_DIR=str(tmp / "no_weights"), GRADIO_ANALYTICS_ENABLED="False",
                   HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO), GRADIO_TEMP_DIR=str(tmp / "gradio"))
        self.log = tmp / "app.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "partcatseg.cli.app", "--model", model, "--no-toy", "--port", str(self.port),
             "--output", str(tmp / "app_files"), "--device", "cpu", "MODEL.TEXT_CACHE_DIR", str(tmp / "text_cache")],
            cwd=str(REPO), env=env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the app exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            if "serving http://127.0.0.1" in self.log.read_text():
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        return
                except OSError:
                    pass
            time.sleep(0.5)
        self.stop()
        raise AssertionError(f"the app did not start in 300 s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def server(tiny_folder, tmp_path_factory):
    srv = Server(str(tiny_folder), tmp_path_factory.mktemp("server"))
    yield srv
    srv.stop()


@pytest.mark.slow
def test_page_through_gradio_client(server):
    from gradio_client import Client, handle_file

    client = Client(server.url, verbose=False)
    api = client.view_api(return_format="dict", print_info=False)
    assert "/segment" in api["named_endpoints"]
    args = (handle_file(str(CAT)), None, CUSTOM, CUSTOM_TEXT, "Pred-All", None, False)
    jobs = [client.submit(*args, api_name="/segment") for _ in range(2)]  # queued, one at a time
    results = [job.result(timeout=300) for job in jobs]
    for overlay, shown, table, latency, files, summary in results:
        assert Image.open(overlay).size[1] >= 300  # the overlay (legend inside or beside)
        assert summary["vocabulary_classes"] == CUSTOM_CLASSES
        assert {c["name"] for c in summary["classes"]} <= set(CUSTOM_CLASSES)
        assert sorted(shown["value"]) == sorted(c["name"] for c in summary["classes"])
        assert "partcatseg-hierarchy" in table and ("teapot" in table or "giraffe" in table)
        assert "s** for this request" in latency
        names = sorted(Path(f).name for f in files)
        assert names == ["chelsea.json", "chelsea_labels.png"]
        downloaded = json.loads(Path([f for f in files if f.endswith(".json")][0]).read_text())
        assert downloaded["vocabulary_classes"] == CUSTOM_CLASSES
    assert results[0][5]["classes"] == results[1][5]["classes"]
    # Oracle-Obj through the API
    *_, summary = client.predict(handle_file(str(CAT)), None, CUSTOM, CUSTOM_TEXT, "Oracle-Obj", "teapot", True,
                                 api_name="/segment")
    assert summary["object"] == "teapot" and {c["name"] for c in summary["classes"]} <= set(CUSTOM_CLASSES[:2])
    assert server.log.read_text().count("partcatseg-app: loading") == 1  # loaded once, at the start


def _browser():
    """Headless Chromium through Selenium, or a skip naming what is missing."""
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
    if not chromium or not driver:
        pytest.skip("no Chromium/chromedriver: apt-get install chromium chromium-driver (Debian) to run the browser test")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1700",
                "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.binary_location = chromium
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.mark.slow
def test_page_in_a_real_browser(tiny_folder, tmp_path_factory, small_toy_root):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    model = os.environ.get("PARTCATSEG_APP_TEST_MODEL") or str(tiny_folder)
    srv = Server(model, tmp_path_factory.mktemp("browser_server"))
    image = sorted((small_toy_root / "ToyPart" / "images" / "val").iterdir())[3]  # a tree and a robot
    upload = tmp_path_factory.mktemp("upload") / "toy_scene.png"  # 4x: easier to see on the page
    with Image.open(image) as im:
        im.convert("RGB").resize((im.width * 4, im.height * 4), Image.NEAREST).save(upload)
    try:
        browser.get(srv.url)
        wait = WebDriverWait(browser, 120)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#segment"))
        browser.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys(str(upload))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#input-image img"))
        text = browser.find_element(By.CSS_SELECTOR, "#vocabulary-text textarea")
        text.clear()
        text.send_keys(TOY_TEXT)
        time.sleep(1.0)  # the textbox's change event
        browser.find_element(By.CSS_SELECTOR, "#segment").click()
        wait.until(lambda b: "robot's head" in b.find_element(By.CSS_SELECTOR, "#summary").text)
        overlay = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#overlay img"))
        first_src = overlay[0].get_attribute("src")
        assert first_src and "toy_scene" not in first_src
        summary = browser.find_element(By.CSS_SELECTOR, "#summary").text
        for name in ("robot's head", "house's roof", "tree's trunk"):
            assert name in summary
        assert "s for this request" in browser.find_element(By.CSS_SELECTOR, "#latency").text
        assert "object / part" in browser.find_element(By.CSS_SELECTOR, "#hierarchy").text
        downloads = browser.find_element(By.CSS_SELECTOR, "#downloads").text.replace("\n", "")
        assert "toy_scene_labels.png" in downloads and "toy_scene.json" in downloads
        shown = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#parts-shown input[type=checkbox][name]"))
        assert all(box.is_selected() for box in shown)
        screenshot = os.environ.get("PARTCATSEG_APP_SCREENSHOT")
        if screenshot:
            browser.save_screenshot(str(Path(screenshot)))
        # switch the largest part off: the overlay is drawn again without running the model
        shown[0].click()
        wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#overlay img").get_attribute("src") != first_src)
    finally:
        browser.quit()
        srv.stop()
