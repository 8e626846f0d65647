"""Portable weights: a checkpoint as a self-contained folder, loading by name, folder or hub repo, uploading.

A *pretrained folder* holds everything a user without the datasets needs to run a model::

    model.safetensors   every tensor of the model's state dict (no pickle; tied tensors stored once)
    config.yaml         the full config (every key), MODEL.WEIGHTS = model.safetensors
    vocabulary.json     the training and test vocabularies: class names and object lists
    README.md           the model card: what it is, its evaluation, the command that made it

:func:`convert_checkpoint` writes one from a released or trained checkpoint; :func:`from_pretrained`
loads a model from a short name of the weights registry (``partcatseg_voc``), a local folder of this
layout, a checkpoint file with a ``config.yaml`` beside it (a training output), or a Hugging Face
repository id (``org/repo``, fetched with ``huggingface_hub.snapshot_download`` into the hub cache;
offline, ``HF_HUB_OFFLINE=1``, only the cache is used); :func:`push_to_hub` uploads a folder.

The vocabularies are part of the folder because dataset names alone are not enough: a dataset a
plugin registered, or a class-list JSON file of the training machine, does not exist elsewhere.
Loading builds the model with the stored vocabularies, whatever the local registry says.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from ..vocab import Vocabulary
from ..weights import WeightsDownloadError, WeightsError, WeightsNotFoundError

__all__ = [
    "WEIGHTS_FILE",
    "CONFIG_FILE",
    "VOCABULARY_FILE",
    "CARD_FILE",
    "VOCABULARY_FORMAT",
    "PretrainedError",
    "PretrainedNotFoundError",
    "PretrainedModel",
    "PretrainedSource",
    "ConvertResult",
    "check_folder",
    "command_line",
    "download_repo",
    "offline",
    "convert_checkpoint",
    "find_results",
    "from_pretrained",
    "load_pretrained",
    "is_pretrained_folder",
    "is_repo_id",
    "model_card",
    "push_to_hub",
    "read_vocabularies",
    "resolve_pretrained",
    "results_markdown",
    "vocabulary_to_dict",
    "vocabulary_from_dict",
]

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
VOCABULARY_FILE = "vocabulary.json"
CARD_FILE = "README.md"
FOLDER_FILES = (WEIGHTS_FILE, CONFIG_FILE, VOCABULARY_FILE, CARD_FILE)
VOCABULARY_FORMAT = "partcatseg-vocabulary/1"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# config values that name class-list JSON files (CAT-Seg CVPR reads its vocabularies from them)
_CLASS_JSON_KEYS = (("train", "TRAIN_CLASS_JSON"), ("test", "TEST_CLASS_JSON"))


# ------------------------------------------------------------------------------------------ errors
class PretrainedError(WeightsError):
    """A pretrained folder that cannot be used (unreadable vocabulary, not the layout); exit status 1 in the CLIs."""


class PretrainedNotFoundError(WeightsNotFoundError):
    """The name is neither a weights name, a folder, a checkpoint with its config, nor a hub repository
    that can be reached (a usage error: exit status 2 in the CLIs)."""


# ------------------------------------------------------------------------------------------ vocabularies
def vocabulary_to_dict(vocabulary: Vocabulary, dataset: str = "") -> dict:
    """A vocabulary as JSON-ready data (what :func:`vocabulary_from_dict` reads back)."""
    return {
        "dataset": dataset,
        "name": vocabulary.name,
        "has_parts": bool(vocabulary.has_parts),
        "classes": list(vocabulary.classes),
        "objects": list(vocabulary.objects),
    }


def vocabulary_from_dict(data: Mapping[str, Any], where: str = "vocabulary") -> Vocabulary:
    try:
        return Vocabulary(list(data["classes"]), list(data.get("objects") or []) if "objects" in data else None,
                          name=str(data.get("name") or "custom"), parts=bool(data.get("has_parts")))
    except (KeyError, TypeError, ValueError) as err:
        raise PretrainedError(f"{where}: not a usable vocabulary ({type(err).__name__}: {err})") from err


def read_vocabularies(folder: os.PathLike | str) -> Optional[dict[str, Vocabulary]]:
    """``{"train": Vocabulary, "test": Vocabulary}`` of a pretrained folder (None without ``vocabulary.json``)."""
    path = Path(folder) / VOCABULARY_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PretrainedError(f"{path}: cannot be read as JSON ({err})") from err
    if not isinstance(data, dict) or data.get("format") != VOCABULARY_FORMAT:
        raise PretrainedError(f"{path}: not a {VOCABULARY_FORMAT} file (format={data.get('format') if isinstance(data, dict) else None!r})")
    return {split: vocabulary_from_dict(data[split], f"{path} [{split}]") for split in ("train", "test")}


def _vocabulary_sources(cfg) -> dict[str, str]:
    """Which config value each vocabulary of ``cfg`` comes from (for the card and vocabulary.json)."""
    train = cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else ""
    test = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else train
    return {"train": train, "test": test}


@contextmanager
def _stored_vocabularies(cfg, stored: Mapping[str, Vocabulary]) -> Iterator[Any]:
    """Make ``from_config(cfg)`` work where the config's vocabulary sources do not exist here.

    Dataset names that this installation cannot resolve (a plugin's dataset) are served the stored
    vocabularies for the duration; class-list JSON files that are absent are replaced by temporary
    files holding the stored classes. Yields the config to build from (a clone when changed).
    The caller overrides the vocabularies with the stored ones anyway; this only lets construction run.
    """
    from ..vocab import dataset_vocabulary, load_class_json, register_vocabulary_provider

    names = _vocabulary_sources(cfg)
    missing: dict[str, Vocabulary] = {}
    for split, name in names.items():
        if not name:
            continue
        try:
            dataset_vocabulary(name)
        except KeyError:
            missing[name] = stored[split]
    _SERVED.update(missing)
    register_vocabulary_provider(_serve_stored)
    build_cfg = cfg
    with tempfile.TemporaryDirectory(prefix="partcatseg-vocab-") as tmp:
        head = cfg.MODEL.SEM_SEG_HEAD
        replace: list[str] = []
        for split, key in _CLASS_JSON_KEYS:
            value = getattr(head, key, "")
            if not value:
                continue
            try:
                load_class_json(value)
            except (FileNotFoundError, ValueError):
                path = os.path.join(tmp, f"{split}_classes.json")
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(list(stored[split].classes), f)
                replace += [f"MODEL.SEM_SEG_HEAD.{key}", path]
        if replace:
            build_cfg = cfg.clone()
            build_cfg.defrost()
            build_cfg.merge_from_list(replace)
            build_cfg.freeze()
        try:
            yield build_cfg
        finally:
            for name in missing:
                _SERVED.pop(name, None)


_SERVED: dict[str, Vocabulary] = {}


def _serve_stored(name: str) -> Optional[Vocabulary]:
    return _SERVED.get(name)


# ------------------------------------------------------------------------------------------ results
def find_results(checkpoint: os.PathLike | str) -> Optional[Path]:
    """The evaluation results written next to a trained checkpoint, if any.

    ``<dir>/inference/results_table.txt`` (train_net's table), else the first
    ``<dir>/inference/<dataset>/part_seg_results.json`` / ``sem_seg_results.json``.
    """
    inference = Path(checkpoint).resolve().parent / "inference"
    table = inference / "results_table.txt"
    if table.is_file():
        return table
    for pattern in ("*/part_seg_results.json", "*/sem_seg_results.json"):
        found = sorted(inference.glob(pattern))
        if found:
            return found[0]
    return None


def results_markdown(path: os.PathLike | str) -> str:
    """The evaluation of a results file as Markdown: a ``.json`` (part or semantic results) becomes the
    paper's table(s); a ``.txt`` table is kept as written; a ``.md`` is included as is."""
    from ..evaluation.tables import semseg_table, summary_table

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--results {path}: file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        return text.strip()
    if path.suffix != ".json":
        if any(line.startswith("|") for line in text.splitlines()):  # train_net's results_table.txt
            return _tables_to_markdown(text.strip(), first_is_dataset=True)
        return "```\n" + text.strip() + "\n```"
    try:
        data = json.loads(text)
    except ValueError as err:
        raise PretrainedError(f"--results {path}: not JSON ({err})") from err

    def table(res: Mapping[str, Any]) -> Optional[str]:
        if "oracle_obj" in res or "pred_all" in res:
            return summary_table(res)
        if "sem_seg" in res and isinstance(res["sem_seg"], Mapping):
            return semseg_table(res["sem_seg"])
        if "mIoU" in res:
            return semseg_table({"sem_seg": res})
        return None

    if not isinstance(data, Mapping):
        raise PretrainedError(f"--results {path}: expected a JSON object of results")
    single = table(data)
    if single is not None:
        title = path.parent.name if path.name.endswith("_results.json") else path.stem
        return f"`{title}`\n\n" + _tables_to_markdown(single)
    blocks = []
    for name, res in data.items():  # {dataset: results}
        if isinstance(res, Mapping) and table(res) is not None:
            blocks.append(f"`{name}`\n\n" + _tables_to_markdown(table(res)))
    if not blocks:
        raise PretrainedError(f"--results {path}: no Oracle-Obj / Pred-All or mIoU results in it")
    return "\n\n".join(blocks)


def _tables_to_markdown(text: str, first_is_dataset: bool = False) -> str:
    """Blocks of title lines and GitHub tables (summary_table, results_table.txt) as Markdown: a dataset
    name (results_table.txt starts each dataset with one) in code style, the other titles in italics."""
    out = []
    for block in text.split("\n\n"):
        lines = block.splitlines()
        titles = [line.strip() for line in lines if not line.startswith("|")]
        table = [line for line in lines if line.startswith("|")]
        # "dataset\ntitle\n|table|": a block with two title lines starts a dataset
        heads = [f"`{t}`" if first_is_dataset and i == 0 and len(titles) >= 2 else f"*{t}*" for i, t in enumerate(titles)]
        out.append("\n\n".join(heads + (["\n".join(table)] if table else [])))
    return "\n\n".join(out)


# ------------------------------------------------------------------------------------------ the card
def _sha256(path: os.PathLike | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_FAMILY = {
    "PartCATSeg": "PartCATSeg (Choi et al., CVPR 2025): open-vocabulary part segmentation with object-aware "
                  "part cost aggregation, CLIP + DINOv2",
    "CATSegBaseline": "the CAT-Seg baseline of the PartCATSeg repository (cost aggregation, CLIP + DINOv2 guidance) "
                      "for open-vocabulary part segmentation",
    "CATSeg": "CAT-Seg (Cho et al., CVPR 2024): open-vocabulary semantic segmentation by cost aggregation over CLIP",
    "PartCLIPSeg": "PartCLIPSeg (Choi et al., NeurIPS 2024): open-vocabulary part segmentation with CLIPSeg",
}


def model_card(
    *,
    title: str,
    facts: Mapping[str, Any],
    cfg,
    vocabularies: Mapping[str, Vocabulary],
    sources: Mapping[str, str],
    results: Optional[str] = None,
    results_source: str = "",
    command: str = "",
    source_checkpoint: str = "",
    source_sha256: str = "",
    description: str = "",
) -> str:
    """The ``README.md`` of a pretrained folder (Hugging Face model card, YAML front matter included)."""
    arch = str(facts.get("meta_architecture", cfg.MODEL.META_ARCHITECTURE))
    task = str(facts.get("task", "part"))
    what = description or _FAMILY.get(arch, f"a {arch} model (a partcatseg meta-architecture)")
    tags = ["image-segmentation", "open-vocabulary-segmentation", "partcatseg", arch.lower()]
    if task == "part":
        tags.append("part-segmentation")
    tags = list(dict.fromkeys(tags))
    lines = [
        "---",
        "library_name: partcatseg",
        "pipeline_tag: image-segmentation",
        "tags:",
        *[f"- {t}" for t in tags],
        "---",
        "",
        f"# {title}",
        "",
        f"{what[0].upper() + what[1:]}. Weights in the portable layout of the `partcatseg` framework: "
        f"`{WEIGHTS_FILE}` (no pickle), the full `{CONFIG_FILE}` and the vocabularies it was trained and "
        f"evaluated with (`{VOCABULARY_FILE}`), so it runs without the datasets.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| meta-architecture | `{arch}` (`MODEL.META_ARCHITECTURE`) |",
        f"| task | {task} ({'object-specific parts, Oracle-Obj and Pred-All' if task == 'part' else 'semantic classes'}) |",
    ]
    if facts.get("parameters"):
        lines.append(f"| parameters | {facts['parameters'] / 1e6:.2f} M |")
    clip = cfg.MODEL.CLIP_ARCH or cfg.MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED
    if arch != "PartCLIPSeg":
        lines.append(f"| CLIP | `{clip}`{' (reduced-width toy CLIP)' if cfg.MODEL.CLIP_ARCH == 'tiny' else ''} |")
    if arch in ("PartCATSeg", "CATSegBaseline"):
        lines.append(f"| guidance backbone | `{cfg.MODEL.DINO_ARCH}` |")
    for split, label in (("train", "trained on"), ("test", "evaluated on")):
        v = vocabularies[split]
        extent = f"{len(v.classes)} classes" + (f", {len(v.objects)} objects" if v.has_parts else "")
        src = sources.get(split) or ""
        named = f"`{src}`, vocabulary `{v.name}`" if src and src != v.name else f"`{src or v.name}`"
        lines.append(f"| {label} | {named} ({extent}) |")
    lines.append(f"| prompt templates | `{cfg.MODEL.PROMPT_ENSEMBLE_TYPE}` |")
    if source_checkpoint:
        sha = f", SHA-256 `{source_sha256[:16]}…`" if source_sha256 else ""
        lines.append(f"| converted from | `{source_checkpoint}`{sha} |")
    lines += ["", "## Evaluation", ""]
    if results:
        if results_source:
            lines += [f"From `{results_source}`:", ""]
        lines += [results.strip(), ""]
    else:
        lines += ["No evaluation results were given when this folder was made (`--results FILE`, or an "
                  "`inference/results_table.txt` next to the checkpoint).", ""]
    example = 'objects="cat: head, ear, tail; dog: head, leg"' if task == "part" else 'classes="cat, dog|puppy, grass"'
    lines += [
        "## Use",
        "",
        "```python",
        "from partcatseg.inference import Predictor",
        "",
        f'predictor = Predictor.from_pretrained("<this repo id or folder>", {example})',
        'pred = predictor("photo.jpg")            # Pred-All' + ("; object=\"cat\" for Oracle-Obj" if task == "part" else ""),
        "pred.labels, pred.class_names, pred.summary()",
        "```",
        "",
        "or in the browser: `partcatseg-app --model <this repo id or folder>`. The vocabulary is an input: any "
        "words work (open vocabulary); without one the test vocabulary of `vocabulary.json` is used.",
        "",
        "## Files",
        "",
        f"* `{WEIGHTS_FILE}`: every tensor of the state dict ({facts.get('tensors', '?')} entries)",
        f"* `{CONFIG_FILE}`: the full config (`MODEL.WEIGHTS: {WEIGHTS_FILE}`, `MODEL.DEVICE: auto`)",
        f"* `{VOCABULARY_FILE}`: training vocabulary `{vocabularies['train'].name}` and test vocabulary "
        f"`{vocabularies['test'].name}` (class names in label order, object lists)",
        "",
        "## How this folder was made",
        "",
        "```python" if command.startswith("convert_checkpoint(") else "```bash",
        command or "(not recorded)",
        "```",
        "",
        f"partcatseg {facts.get('partcatseg_version', '?')}, torch {facts.get('torch_version', '?')}. Loading it "
        "gives outputs bit-identical to the original checkpoint's.",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ convert
@dataclass
class ConvertResult:
    """What :func:`convert_checkpoint` wrote."""

    folder: Path
    weights: Path
    config: Path
    vocabulary: Path
    card: Path
    results_source: Optional[Path]
    report: Any  # the LoadReport of reading the source checkpoint
    facts: dict = field(default_factory=dict)


def _config_for(weights: str, config_file: Optional[str]) -> str:
    """The config of a checkpoint: given, else the registry's, else ``config.yaml`` beside the file."""
    from ..weights import WEIGHTS

    if config_file:
        return str(config_file)
    spec = WEIGHTS.get(weights)
    if spec is not None:
        if not spec.config:
            raise PretrainedNotFoundError(f"{weights} is a training initialisation ({spec.description}), not a model; "
                             f"it has no config to convert with")
        path = _REPO_ROOT / spec.config
        if not path.is_file():
            raise PretrainedNotFoundError(f"{weights} belongs to {spec.config}, which is not here; pass --config-file")
        return str(path)
    beside = Path(weights).expanduser().resolve().parent / CONFIG_FILE
    if Path(weights).is_file() and beside.is_file():
        return str(beside)
    raise PretrainedNotFoundError(f"no config for {weights}: pass --config-file (a training run's OUTPUT_DIR/config.yaml "
                     f"is found automatically next to its checkpoint)")


def _portable_config_text(cfg) -> str:
    portable = cfg.clone()
    portable.defrost()
    portable.MODEL.WEIGHTS = WEIGHTS_FILE
    portable.MODEL.DEVICE = "auto"
    portable.MODEL.TEXT_CACHE_DIR = ""
    return portable.dump()


def _write_text(path: Path, text: str) -> None:
    from ..checkpoint import atomic_write

    atomic_write(str(path), lambda f: f.write(text.encode("utf-8")), what=path.name)


def convert_checkpoint(
    weights: str,
    output_dir: os.PathLike | str,
    *,
    config_file: Optional[str] = None,
    opts: Sequence[str] = (),
    results: Optional[os.PathLike | str] = None,
    title: str = "",
    description: str = "",
    command: str = "",
    overwrite: bool = False,
) -> ConvertResult:
    """Write a pretrained folder (see the module docstring) for a checkpoint.

    Args:
        weights: a checkpoint path (``.pth`` / ``.safetensors``) or a weights-registry name (``partcatseg_voc``).
        output_dir: the folder to write (created; must be empty unless ``overwrite``).
        config_file: its config; default: the registry's config, else ``config.yaml`` beside the file.
        opts: config overrides (``KEY VALUE`` pairs), stored in the folder's config.
        results: an evaluation results file for the card (``results_table.txt``, ``part_seg_results.json``,
            ``.md``); default: the ``inference/`` results written next to a trained checkpoint.
        title / description / command: for the model card.
    """
    import torch

    from .. import __version__
    from ..checkpoint import Checkpointer, save_safetensors
    from ..config import setup_cfg
    from ..modeling import build_model
    from ..weights import resolve_weights

    if results and not Path(results).is_file():
        raise FileNotFoundError(f"--results {results}: file not found")
    config_path = _config_for(weights, config_file)
    path = resolve_weights(weights)
    if not path:
        raise PretrainedNotFoundError("no checkpoint given (an empty name)")
    out = Path(output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--output {out} is not empty; pass --force to overwrite its files")
    cfg = setup_cfg(config_path, list(opts) + ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    model = build_model(cfg)
    report = Checkpointer(model).load_weights(path)
    if report.missing or report.shape_mismatch:
        logger.warning("%s does not cover the whole model; the folder stores the model as loaded (missing "
                       "entries keep their initial values):\n%s", path, report.summary())
    model.eval()
    state = model.state_dict()
    facts = dict(model.describe())
    facts.update(
        parameters=sum(p.numel() for p in model.parameters()),
        tensors=len(state),
        partcatseg_version=__version__,
        torch_version=torch.__version__.split("+")[0],
    )
    vocabularies = {"train": model.train_vocabulary, "test": model.vocabulary}
    sources = _vocabulary_sources(cfg)
    results_path = Path(results) if results else (find_results(path) if os.path.isfile(path) else None)
    results_text = results_markdown(results_path) if results_path else None

    out.mkdir(parents=True, exist_ok=True)
    weights_out, config_out, vocab_out, card_out = (out / name for name in FOLDER_FILES)
    save_safetensors(state, str(weights_out), metadata={
        "partcatseg.meta_architecture": str(facts.get("meta_architecture", "")),
        "partcatseg.task": str(facts.get("task", "")),
        "partcatseg.version": __version__,
        "partcatseg.source": os.path.basename(path),
    })
    _write_text(config_out, _portable_config_text(cfg))
    vocab_data = {
        "format": VOCABULARY_FORMAT,
        "task": facts.get("task", model.task),
        "train": vocabulary_to_dict(vocabularies["train"], sources["train"]),
        "test": vocabulary_to_dict(vocabularies["test"], sources["test"]),
    }
    _write_text(vocab_out, json.dumps(vocab_data, indent=2, ensure_ascii=False) + "\n")
    source_sha = _sha256(path) if os.path.isfile(path) else ""
    if not command:  # called from Python: the call itself
        args = [repr(str(weights)), repr(str(output_dir))]
        args += [f"{k}={v!r}" for k, v in (("config_file", config_file), ("opts", list(opts)),
                                           ("results", str(results) if results else None)) if v]
        command = f"convert_checkpoint({', '.join(args)})"
    card = model_card(
        title=title or out.resolve().name,
        facts=facts,
        cfg=cfg,
        vocabularies=vocabularies,
        sources=sources,
        results=results_text,
        results_source=_display_path(results_path) if results_path else "",
        command=command,
        source_checkpoint=str(weights),
        source_sha256=source_sha,
        description=description,
    )
    _write_text(card_out, card)
    logger.info("wrote %s (%d tensors), %s, %s, %s", weights_out, len(state), config_out, vocab_out, card_out)
    return ConvertResult(out, weights_out, config_out, vocab_out, card_out, results_path, report, facts)


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def command_line(prog: str, argv: Sequence[str]) -> str:
    """A command as a user would type it (for the card)."""
    return shlex.join([prog, *argv])


# ------------------------------------------------------------------------------------------ resolving
def is_pretrained_folder(path: os.PathLike | str) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CONFIG_FILE).is_file() and (p / WEIGHTS_FILE).is_file()


def is_repo_id(name: str) -> bool:
    """Whether ``name`` has the form of a Hugging Face repository id (``org/repo``)."""
    return bool(_REPO_ID.match(name)) and ".." not in name


def offline() -> bool:
    """Whether the environment forbids network access (PARTCATSEG_OFFLINE, HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE)."""
    return any(os.environ.get(k, "") not in ("", "0", "false", "False")
               for k in ("PARTCATSEG_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_cache_dir() -> Optional[str]:
    """The hub cache named by the environment *now* (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def download_repo(repo_id: str, *, revision: Optional[str] = None, cache_dir: Optional[str] = None,
                  local_files_only: Optional[bool] = None) -> Path:
    """The snapshot folder of hub repository ``repo_id``: fetched into the hub cache (only the pretrained
    folder's file types), or read from the cache when offline, when ``local_files_only``, or when the hub
    cannot be reached (one quick probe instead of the client's retries)."""
    from huggingface_hub import snapshot_download

    from ..weights import _unreachable

    local_only = offline() if local_files_only is None else bool(local_files_only)
    cache_dir = cache_dir or _hub_cache_dir()
    where = f" (cache: {cache_dir})" if cache_dir else ""
    unreachable = None if local_only else _unreachable(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")

    def fetch(local: bool) -> str:
        return snapshot_download(repo_id=repo_id, revision=revision, cache_dir=cache_dir, local_files_only=local,
                                 allow_patterns=["*.safetensors", "*.yaml", "*.json", "*.md"])

    try:
        folder = fetch(local_only or unreachable is not None)
        if unreachable:
            logger.warning("%s; using the cached snapshot of %s", unreachable, repo_id)
    except Exception as err:  # noqa: BLE001 - the hub client raises many types; all mean "not available"
        kind = type(err).__name__
        first = str(err).splitlines()[0] if str(err) else ""
        if local_only:
            why = "offline (HF_HUB_OFFLINE / PARTCATSEG_OFFLINE)" if local_files_only is None else "local_files_only"
            raise PretrainedNotFoundError(
                f"{repo_id!r} is not a local folder, a weights name or a hub repository in the local cache{where}; "
                f"{why}, so nothing was downloaded ({kind})") from err
        if unreachable:
            raise WeightsDownloadError(f"{repo_id!r}: {unreachable}, and it is not in the local cache{where}") from err
        if kind in ("RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError"):
            raise PretrainedNotFoundError(f"{repo_id!r}: no such hub repository or revision, or no access "
                                          f"({kind}: {first})") from err
        raise WeightsDownloadError(f"{repo_id!r}: download from the Hugging Face hub failed ({kind}: {first})") from err
    folder = Path(folder)
    if not is_pretrained_folder(folder):
        present = sorted(p.name for p in folder.iterdir())
        raise PretrainedError(f"hub repository {repo_id!r} is not a partcatseg pretrained folder: it needs "
                              f"{CONFIG_FILE} and {WEIGHTS_FILE}; it has {present}")
    return folder


@dataclass
class PretrainedSource:
    """Where a model comes from: ``kind`` is "folder", "hub", "registry" or "checkpoint"."""

    name: str
    kind: str
    config_file: str
    weights: str
    folder: Optional[Path] = None

    @property
    def description(self) -> str:
        return {"folder": "pretrained folder", "hub": "hub repository", "registry": "released weights",
                "checkpoint": "checkpoint"}[self.kind] + f" {self.name}"


def resolve_pretrained(name_or_path: os.PathLike | str, *, config_file: Optional[str] = None,
                       revision: Optional[str] = None, cache_dir: Optional[str] = None,
                       local_files_only: Optional[bool] = None) -> PretrainedSource:
    """Find what ``name_or_path`` means (see :func:`from_pretrained`), downloading a hub repository if needed."""
    from ..weights import WEIGHTS, resolve_weights

    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        if not is_pretrained_folder(path):
            present = sorted(p.name for p in path.iterdir())[:10]
            raise PretrainedNotFoundError(f"{name} is a folder but not a pretrained folder: it needs {CONFIG_FILE} and "
                             f"{WEIGHTS_FILE} (tools/convert_checkpoint.py writes them); it has {present}")
        return PretrainedSource(name, "folder", str(path / CONFIG_FILE), str(path / WEIGHTS_FILE), path)
    if path.is_file():
        return PretrainedSource(name, "checkpoint", _config_for(str(path), config_file), str(path))
    spec = WEIGHTS.get(name)
    if spec is not None:
        cfg_file = _config_for(name, config_file)
        return PretrainedSource(name, "registry", cfg_file, resolve_weights(name))
    if is_repo_id(name):
        folder = download_repo(name, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        return PretrainedSource(name, "hub", str(folder / CONFIG_FILE), str(folder / WEIGHTS_FILE), folder)
    raise PretrainedNotFoundError(
        f"{name!r} is not a pretrained folder, a checkpoint file, a weights name ({', '.join(sorted(n for n, s in WEIGHTS.items() if s.config))}) "
        f"or a Hugging Face repository id (org/name)"
    )


@dataclass
class PretrainedModel:
    """A loaded model with its config and origin (what :func:`load_pretrained` returns)."""

    model: Any
    cfg: Any
    source: PretrainedSource
    report: Any = None


def load_pretrained(name_or_path: os.PathLike | str, *, device: Optional[str] = None, opts: Sequence[str] = (),
                    config_file: Optional[str] = None, revision: Optional[str] = None,
                    cache_dir: Optional[str] = None, local_files_only: Optional[bool] = None) -> PretrainedModel:
    """:func:`from_pretrained` that also returns the config and where the model came from."""
    from ..checkpoint import Checkpointer
    from ..config import resolve_device, setup_cfg
    from ..modeling import meta_architecture_class

    source = resolve_pretrained(name_or_path, config_file=config_file, revision=revision, cache_dir=cache_dir,
                                local_files_only=local_files_only)
    extra = list(opts) + ["MODEL.WEIGHTS", source.weights] + (["MODEL.DEVICE", device] if device else [])
    cfg = setup_cfg(source.config_file, extra)
    stored = read_vocabularies(source.folder) if source.folder is not None else None
    if source.folder is not None and stored is None:
        logger.warning("%s has no %s: the vocabularies come from the config's dataset names", source.name, VOCABULARY_FILE)
    cls = meta_architecture_class(cfg)
    if stored is not None:
        with _stored_vocabularies(cfg, stored) as build_cfg:
            kwargs = cls.from_config(build_cfg)
        kwargs["train_vocabulary"] = stored["train"]
        kwargs["test_vocabulary"] = stored["test"]
    else:
        kwargs = cls.from_config(cfg)
    model = cls(**kwargs).to(resolve_device(cfg))
    report = Checkpointer(model).load_weights(source.weights, strict=source.kind in ("folder", "hub"))
    if report.missing or report.shape_mismatch:
        logger.warning("Weights do not cover the whole model; predictions may be poor:\n%s", report.summary())
    return PretrainedModel(model.eval(), cfg, source, report)


def from_pretrained(name_or_path: os.PathLike | str, *, device: Optional[str] = None, opts: Sequence[str] = (),
                    config_file: Optional[str] = None, revision: Optional[str] = None,
                    cache_dir: Optional[str] = None, local_files_only: Optional[bool] = None):
    """A :class:`~partcatseg.modeling.SegmentationModel` in eval mode, from any of:

    * a pretrained folder (``model.safetensors`` + ``config.yaml`` + ``vocabulary.json``; see
      :func:`convert_checkpoint`): loaded strictly, with the stored vocabularies;
    * a short name of the weights registry (``partcatseg_voc``): its file in the weights directory and
      its config (a missing file is an error saying how to download it);
    * a checkpoint file (``.pth`` / ``.safetensors``) with ``config_file`` or a ``config.yaml`` beside it
      (a training run's ``OUTPUT_DIR``);
    * a Hugging Face repository id (``org/repo``, optional ``revision``) holding a pretrained folder:
      downloaded into the hub cache (``cache_dir``, default ``$HF_HUB_CACHE`` / ``$HF_HOME/hub``); offline
      (``HF_HUB_OFFLINE=1``, ``PARTCATSEG_OFFLINE=1`` or ``local_files_only=True``) only the cache is read.

    ``device`` (``cpu``, ``cuda``, ``auto``...) and ``opts`` (``KEY VALUE`` config overrides) apply on top.
    """
    return load_pretrained(name_or_path, device=device, opts=opts, config_file=config_file, revision=revision,
                           cache_dir=cache_dir, local_files_only=local_files_only).model


# ------------------------------------------------------------------------------------------ upload
def check_folder(folder: os.PathLike | str) -> Path:
    folder = Path(folder)
    missing = [name for name in FOLDER_FILES if not (folder / name).is_file()]
    if missing:
        raise PretrainedNotFoundError(f"{folder} is not a complete pretrained folder: {', '.join(missing)} missing "
                         f"(tools/convert_checkpoint.py writes all four)")
    read_vocabularies(folder)  # a readable vocabulary file
    return folder


def push_to_hub(folder: os.PathLike | str, repo_id: str, *, private: Optional[bool] = None, token: Optional[str] = None,
                revision: Optional[str] = None, commit_message: Optional[str] = None, api: Any = None) -> str:
    """Upload a pretrained folder to the hub repository ``repo_id`` (created if needed); returns its URL.

    Uses ``HfApi.create_repo(..., exist_ok=True)`` and ``HfApi.upload_folder`` with the folder's four
    files only. ``token``: default the logged-in token (``huggingface-cli login`` / ``$HF_TOKEN``).
    """
    folder = check_folder(folder)
    if not is_repo_id(repo_id):
        raise PretrainedNotFoundError(f"{repo_id!r} is not a hub repository id (expected <user or org>/<name>)")
    if api is None:
        if offline():
            raise WeightsDownloadError(f"offline (HF_HUB_OFFLINE / PARTCATSEG_OFFLINE): not uploading {folder} to {repo_id}")
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    repo_url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        repo_type="model",
        folder_path=str(folder),
        allow_patterns=list(FOLDER_FILES),
        commit_message=commit_message or f"Upload {folder.name} (partcatseg pretrained folder)",
        revision=revision,
    )
    return str(repo_url)
