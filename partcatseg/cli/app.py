"""``partcatseg-app``: open-vocabulary part segmentation in the browser (Gradio).

    partcatseg-app                                   # released weights if present, else the toy model
    partcatseg-app --model partcatseg_voc --device cuda
    partcatseg-app --model hub/my_folder --model org/repo --port 7861
    make app

Upload a photo or pick an example, choose a model, type the vocabulary in the demo's syntax
(``cat: head, ear, tail; dog: head, leg``; CAT-Seg: ``cat, dog|puppy, grass``) or pick a dataset's,
choose Pred-All or Oracle-Obj (pick the object), and get the overlay (legend, outlines; parts switched on
and off without running the model again), the object -> part table with areas, the latency, and the
label PNG and JSON the demo CLI writes. Models load once; text features are cached per vocabulary;
requests queue (one at a time). Without released weights, pretrained folders or ``--model``, the toy
model of ``make demo`` is served (trained on first start when missing) under a banner saying so.
The server binds to 127.0.0.1 unless ``--host`` says otherwise.
"""
from __future__ import annotations

import argparse
import atexit
import inspect
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

from ..runtime import tune_allocator
from .errors import UsageError, run_cli
from .overrides import parse_with_overrides

__all__ = ["main", "build_parser", "build_app", "PROG", "EXAMPLE_VOCABULARIES"]

PROG = "partcatseg-app"

EXAMPLE_VOCABULARIES = {
    "chelsea.png": "cat: head, ear, eye, nose, torso, leg, tail",
    "coffee.png": "cup: handle, body, rim; saucer: rim, base; spoon: handle, bowl",
    "motorcycle_left.png": "motorbike: wheel, headlight, handlebar, saddle, body",
}
DEFAULT_TEXT = EXAMPLE_VOCABULARIES["chelsea.png"]
MODES = ["Pred-All", "Oracle-Obj"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Open-vocabulary part segmentation in the browser (Gradio): upload an image, type the "
                    "objects and parts, see the parts.",
        epilog="Trailing KEY VALUE pairs override config keys of every model (e.g. TEST.AMP bf16).",
    )
    p.add_argument("--model", action="append", default=[],
                   help="a model to offer (repeatable): a weights name (partcatseg_voc), a pretrained folder, a "
                        "checkpoint with config.yaml beside it, or a Hugging Face repo id (org/name). Default: the "
                        "released weights present, pretrained folders in the weights directory, the toy model")
    p.add_argument("--models-dir", action="append", default=None,
                   help="look for pretrained folders here (repeatable; default: the weights directory)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto = CUDA when available)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 serves the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 = any free port)")
    p.add_argument("--output", default=None,
                   help="keep every request's files (overlay, label PNG, JSON) here; default: a temporary folder "
                        "removed at exit")
    p.add_argument("--max-side", type=int, default=1024,
                   help="predict with the longer side reduced to this many pixels (0 = full size; default 1024)")
    p.add_argument("--toy-output", default="output/toy_demo",
                   help="where the toy model of `make demo` is (and is trained to when missing)")
    p.add_argument("--no-train", action="store_true", help="never train the toy model; fail if there is no model")
    p.add_argument("--no-toy", action="store_true", help="do not offer the toy model")
    p.add_argument("--max-loaded", type=int, default=2, help="models kept in memory at once (default 2)")
    return p


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", 0))
        return s.getsockname()[1]


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
    if device.startswith("cuda:"):
        index = int(device.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def _kwargs(component: Any, **kwargs: Any) -> dict:
    """The keyword arguments ``component`` accepts (Gradio 5 and 6 differ in a few)."""
    params = inspect.signature(component.__init__).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def _hidden_api(listener: Any) -> dict:
    """Keyword arguments keeping a page-internal event out of the API page (Gradio 6: api_visibility)."""
    params = inspect.signature(listener).parameters
    if "api_visibility" in params:
        return {"api_visibility": "undocumented"}
    return {"show_api": False} if "show_api" in params else {}


def build_app(backend, *, banner: str = "", examples: Sequence[Path] = (), title: str = "PartCATSeg"):
    """The Gradio Blocks page over an :class:`~partcatseg.cli.app_backend.AppBackend`."""
    import gradio as gr

    from ..vocab import VocabularyError
    from .app_backend import CUSTOM

    def ui_error(err: Exception) -> Exception:
        return gr.Error(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)

    def on_model(label):
        try:
            sources = backend.vocabulary_sources(label)
            info = backend.describe(label)
            toy = backend.choice(label).toy
        except Exception as err:  # noqa: BLE001 - shown on the page
            raise ui_error(err) from err
        return (gr.update(choices=sources, value=CUSTOM), gr.update(value=info),
                gr.update(value=backend_banner(toy), visible=bool(toy or banner)))

    def backend_banner(toy: bool) -> str:
        from .app_backend import TOY_BANNER

        return "\n\n".join(x for x in (banner, TOY_BANNER if toy else "") if x)

    def on_vocabulary(label, source, text):
        choices = backend.objects(label, source, text)
        return gr.update(choices=choices, value=choices[0] if choices else None)

    def segment(image, label, source, text, mode, object_name, no_background):
        try:
            result = backend.segment(image, label, source, text, mode, object_name, bool(no_background))
        except (VocabularyError, ValueError, KeyError, FileNotFoundError) as err:
            raise ui_error(err) from err
        hierarchy = _hierarchy_html(result)
        return (result.overlay, gr.update(choices=result.present, value=list(result.present)), hierarchy,
                result.latency_text(), result.files, result.summary, result)

    def toggle(shown, result):
        if result is None:
            return gr.update()
        return backend.render(result, shown)

    def _hierarchy_html(result):
        from .app_backend import hierarchy_html

        return hierarchy_html(result.groups, result.class_names, result.summary["height"] * result.summary["width"],
                              result.summary["unlabeled_pixels"])

    default = backend.default
    first_toy = backend.choice(default).toy
    # delete_cache: Gradio's copies of uploads and results ($GRADIO_TEMP_DIR) go after an hour and at exit
    with gr.Blocks(title=f"{title} — open-vocabulary part segmentation", analytics_enabled=False,
                   **_kwargs(gr.Blocks, delete_cache=(3600, 3600))) as demo:
        gr.Markdown(f"# {title}: open-vocabulary part segmentation\nUpload an image, name the objects and their "
                    "parts in any words, and see where they are. It runs on this machine: images are not sent anywhere.")
        banner_md = gr.Markdown(backend_banner(first_toy), visible=bool(first_toy or banner), elem_id="banner")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", label="Image", elem_id="input-image",
                                 **_kwargs(gr.Image, sources=["upload", "clipboard"], image_mode="RGB"))
                model = gr.Dropdown(choices=list(backend.choices), value=default, label="Model", elem_id="model")
                model_info = gr.Markdown(backend.describe(default), elem_id="model-info")
                source = gr.Dropdown(choices=backend.vocabulary_sources(default), value=CUSTOM,
                                     label="Vocabulary", elem_id="vocabulary-source")
                text = gr.Textbox(value=DEFAULT_TEXT, label="Objects and parts (custom vocabulary)",
                                  info='"object: part, part; object: part" — any words; CAT-Seg: "cat, dog|puppy, grass"',
                                  lines=2, elem_id="vocabulary-text")
                with gr.Row():
                    mode = gr.Radio(choices=MODES, value="Pred-All", label="Mode", elem_id="mode",
                                    info="Pred-All: every class and background; Oracle-Obj: only the object's parts")
                    object_name = gr.Dropdown(choices=backend.objects(default, CUSTOM, DEFAULT_TEXT), value=None,
                                              label="Object (Oracle-Obj)", allow_custom_value=True, elem_id="object")
                no_background = gr.Checkbox(value=False, label="every pixel gets a part (no background)")
                run = gr.Button("Segment", variant="primary", elem_id="segment")
                if examples:
                    gr.Examples(examples=[[str(p), EXAMPLE_VOCABULARIES.get(p.name, DEFAULT_TEXT)] for p in examples],
                                inputs=[image, text], label="Examples (scikit-image)")
            with gr.Column(scale=1):
                overlay = gr.Image(type="numpy", label="Result", interactive=False, elem_id="overlay",
                                   **_kwargs(gr.Image, format="png"))
                shown = gr.CheckboxGroup(choices=[], value=[], label="Parts shown (switch on and off)",
                                         elem_id="parts-shown", **_kwargs(gr.CheckboxGroup, show_select_all=True))
                latency = gr.Markdown("", elem_id="latency")
                hierarchy = gr.HTML("", label="Objects and parts", elem_id="hierarchy")
                files = gr.File(label="Downloads: label PNG and JSON (as partcatseg-demo writes them)",
                                file_count="multiple", interactive=False, elem_id="downloads")
                with gr.Accordion("JSON", open=True):
                    summary = gr.JSON(label="JSON", elem_id="summary")
        state = gr.State(None)

        hidden = _hidden_api(run.click)
        model.change(on_model, inputs=[model], outputs=[source, model_info, banner_md], **hidden)
        for trigger in (source.change, text.change, model.change):
            trigger(on_vocabulary, inputs=[model, source, text], outputs=[object_name], show_progress="hidden",
                    **hidden)
        run.click(segment, inputs=[image, model, source, text, mode, object_name, no_background],
                  outputs=[overlay, shown, hierarchy, latency, files, summary, state], api_name="segment")
        shown.input(toggle, inputs=[shown, state], outputs=[overlay], show_progress="hidden", **hidden)
    demo.queue(default_concurrency_limit=1, max_size=64)
    return demo


def _main(argv: list) -> int:
    from .app_backend import AppBackend, discover_models, ensure_toy_model, example_images
    args, opts = parse_with_overrides(build_parser(), argv)
    if args.max_side < 0:
        raise UsageError(f"--max-side must be >= 0, got {args.max_side}")
    _check_device(args.device)
    try:
        import gradio  # noqa: F401
    except ImportError as err:
        raise UsageError(f"the web app needs gradio: pip install 'gradio>=5' (or pip install -e '.[app]'): {err}") from err
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    choices = discover_models(args.model, models_dirs=args.models_dir, toy_output=args.toy_output,
                              include_toy=not args.no_toy)
    if not choices:
        if args.no_toy or args.no_train:
            raise UsageError("no model to serve: no --model, no released weights in the weights directory "
                             "(python tools/download_weights.py partcatseg_voc) and no toy model "
                             f"({args.toy_output}/model_final.pth; `make demo` trains it)")
        ensure_toy_model(args.toy_output)
        choices = discover_models(args.model, models_dirs=args.models_dir, toy_output=args.toy_output)
    if args.output:
        output = Path(args.output)
    else:
        output = Path(tempfile.mkdtemp(prefix="partcatseg-app-"))
        atexit.register(shutil.rmtree, output, True)
    backend = AppBackend(choices, output_dir=output / "requests", device=args.device, opts=opts,
                         max_side=args.max_side, max_loaded=args.max_loaded)
    print(f"{PROG}: loading {backend.default} ...", file=sys.stderr, flush=True)
    backend.warm_up()  # the first request pays neither the model's loading nor its test vocabulary's text
    predictor = backend.predictor()
    examples = example_images(output / "examples")
    demo = build_app(backend, examples=examples)
    port = _free_port(args.host) if args.port == 0 else args.port
    url_host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
    print(f"{PROG}: serving http://{url_host}:{port} (models: {', '.join(backend.choices)}; device "
          f"{predictor.model.device}; request files in {output / 'requests'}). Ctrl-C stops.", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a terminated server still removes its temporary folder
    demo.launch(server_name=args.host, server_port=port, share=False, inbrowser=False, show_error=True,
                quiet=True, allowed_paths=[str(output)])
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point (the common error path: user errors in one line, exit 2 / 1)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tune_allocator()
    return run_cli(_main, argv, PROG)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
