"""Released checkpoints by short name: where they live, how to fetch them, how to trust them.

Configs and command lines may name a checkpoint by its short name (``MODEL.WEIGHTS partcatseg_voc``);
:func:`resolve_weights` turns that into ``<weights dir>/<file>`` and, when the file is missing, fails
with the exact command (or URL and target path) that gets it.

Downloads (:func:`download`) go through the ordinary clients: ``huggingface_hub`` for the CAT-Seg
files on the Hugging Face hub, ``gdown`` for the PartCATSeg files on Google Drive. Both resume an
interrupted transfer. Every file is checked before it is used:

* its size and SHA-256 against the registry when the authors' values are known;
* otherwise against the values recorded the first time the file passed (``checksums.json`` in the
  weights directory, "trust on first use"), so a file that changes afterwards is caught;
* always its container format (a torch zip/pickle or a safetensors header), which catches the HTML
  page Google Drive returns instead of a file when its quota is exceeded.

A file that fails is renamed ``<file>.corrupt`` (never deleted, never used) and fetched again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

__all__ = [
    "WeightSpec",
    "WEIGHTS",
    "WeightsError",
    "WeightsNotFoundError",
    "WeightsVerificationError",
    "WeightsDownloadError",
    "weights_dir",
    "resolve_weights",
    "lookup",
    "verify_file",
    "download",
    "manual_instructions",
    "fetch_huggingface",
    "fetch_google_drive",
    "weights_table",
    "sha256_of",
]

WEIGHTS_DIR_ENV = "PARTCATSEG_WEIGHTS_DIR"
CHECKSUMS_FILE = "checksums.json"
_REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class WeightSpec:
    """One released checkpoint.

    ``size``/``sha256`` are the authors' values when known; ``None`` means unknown (the first
    verified download is recorded and later checks compare against it).
    """

    name: str
    filename: str
    source: str  # "huggingface" | "google_drive" | "unreleased"
    description: str
    config: Optional[str] = None  # config the checkpoint belongs to (relative to the repository)
    repo_id: Optional[str] = None  # Hugging Face repository
    repo_file: Optional[str] = None  # file inside the Hugging Face repository
    drive_id: Optional[str] = None  # Google Drive file id
    size: Optional[int] = None
    sha256: Optional[str] = None
    approx_size: str = "unknown"
    file_format: str = "torch"  # "torch" (torch.save zip or legacy pickle) | "safetensors"
    note: str = ""

    @property
    def url(self) -> Optional[str]:
        if self.source == "huggingface":
            return f"https://huggingface.co/{self.repo_id}/resolve/main/{self.repo_file}"
        if self.source == "google_drive":
            return f"https://drive.google.com/uc?id={self.drive_id}"
        return None

    @property
    def available(self) -> bool:
        return self.source in ("huggingface", "google_drive")


_HF_CATSEG = "hamacojr/CAT-Seg"

# Sources: CAT-Seg README (cvlab-kaist/CAT-Seg; CVPR-2024 files model_base/model_large, pre-CVPR
# model_final_*), part-catseg README at b88ed3b (Drive ids after the authors' 2025-05 link fix; the
# earlier Pascal link pointed at a PartCLIPSeg checkpoint), part-clipseg README at 8abceef (its ADE
# download comment names the VOC file by mistake; its file tree says partclipseg_ade_oracle.pth).
# No author publishes sizes or hashes; the part-catseg README only says "928M on Ubuntu / 885M on
# Google Drive".
WEIGHTS: dict[str, WeightSpec] = {
    spec.name: spec
    for spec in (
        WeightSpec(
            name="partcatseg_voc",
            filename="partcatseg_voc.pth",
            source="google_drive",
            drive_id="1JUJjJQLMKE96H5SLNs4EMm4jiU6fPgRb",
            config="configs/zero_shot/partcatseg_voc.yaml",
            approx_size="≈928 MB",
            description="PartCATSeg, zero-shot Pascal-Part-116",
        ),
        WeightSpec(
            name="partcatseg_ade",
            filename="partcatseg_ade.pth",
            source="google_drive",
            drive_id="1MKQEk71o9Xvs4aBY_GLyGa1lWTaW10fv",
            config="configs/zero_shot/partcatseg_ade.yaml",
            approx_size="≈928 MB",
            description="PartCATSeg, zero-shot ADE20K-Part-234",
        ),
        WeightSpec(
            name="partcatseg_partimagenet",
            filename="partcatseg_partimagenet.pth",
            source="unreleased",
            config="configs/zero_shot/partcatseg_partimagenet.yaml",
            description="PartCATSeg, zero-shot PartImageNet",
            note="not released: the part-catseg README lists it as TBA",
        ),
        WeightSpec(
            name="partclipseg_voc",
            filename="partclipseg_voc_oracle.pth",
            source="google_drive",
            drive_id="1ytZpfutk__67GLwB-4jMClehJlnAzYFS",
            config="configs/zero_shot/partclipseg_voc_oracle.yaml",
            approx_size="≈829 MB",
            description="PartCLIPSeg (NeurIPS 2024), zero-shot Pascal-Part-116 (Oracle-Obj and Pred-All configs)",
        ),
        WeightSpec(
            name="partclipseg_ade",
            filename="partclipseg_ade_oracle.pth",
            source="google_drive",
            drive_id="10UTxrlamYq2rq3Uuv1GdOxpLy8f-QXoz",
            config="configs/zero_shot/partclipseg_ade_oracle.yaml",
            approx_size="≈829 MB",
            description="PartCLIPSeg (NeurIPS 2024), zero-shot ADE20K-Part-234",
        ),
        WeightSpec(
            name="partclipseg_partimagenet",
            filename="partclipseg_partimagenet_oracle.pth",
            source="unreleased",
            config="configs/zero_shot/partclipseg_partimagenet_oracle.yaml",
            description="PartCLIPSeg, zero-shot PartImageNet",
            note="not released by the authors",
        ),
        WeightSpec(
            name="clipseg_rd64_refined",
            filename="clipseg_rd64_refined.bin",
            source="huggingface",
            repo_id="CIDAS/clipseg-rd64-refined",
            repo_file="pytorch_model.bin",
            approx_size="≈603 MB",
            description="CLIPSeg rd64-refined (transformers layout): PartCLIPSeg's training initialisation",
        ),
        WeightSpec(
            name="catseg_base",
            filename="model_base.pth",
            source="huggingface",
            repo_id=_HF_CATSEG,
            repo_file="model_base.pth",
            config="configs/catseg/vitb_384.yaml",
            description="CAT-Seg CVPR 2024, ViT-B/16 (COCO-Stuff training)",
        ),
        WeightSpec(
            name="catseg_large",
            filename="model_large.pth",
            source="huggingface",
            repo_id=_HF_CATSEG,
            repo_file="model_large.pth",
            config="configs/catseg/vitl_336.yaml",
            description="CAT-Seg CVPR 2024, ViT-L/14@336px (COCO-Stuff training)",
        ),
        WeightSpec(
            name="catseg_final_base",
            filename="model_final_base.pth",
            source="huggingface",
            repo_id=_HF_CATSEG,
            repo_file="model_final_base.pth",
            description="pre-CVPR CAT-Seg ViT-B/16 + R101: the initialisation PartCATSeg training starts from",
            note="configs name it pretrain_weights/model_final_base.pth; found here by its file name",
        ),
        WeightSpec(
            name="clip_vitb16_openai",
            filename="clip_vitb16_openai.safetensors",
            source="huggingface",
            repo_id="timm/vit_base_patch16_clip_224.openai",
            repo_file="open_clip_model.safetensors",
            file_format="safetensors",
            approx_size="≈600 MB",
            description="OpenAI CLIP ViT-B/16 (open_clip layout): CLIP for training without a CAT-Seg checkpoint",
        ),
        WeightSpec(
            name="clip_vitl14_336_openai",
            filename="clip_vitl14_336_openai.safetensors",
            source="huggingface",
            repo_id="timm/vit_large_patch14_clip_336.openai",
            repo_file="open_clip_model.safetensors",
            file_format="safetensors",
            approx_size="≈1.7 GB",
            description="OpenAI CLIP ViT-L/14@336px (open_clip layout): CAT-Seg ViT-L training",
        ),
        WeightSpec(
            name="dinov2_vits14",
            filename="dinov2_vits14_lvd142m.safetensors",
            source="huggingface",
            repo_id="timm/vit_small_patch14_dinov2.lvd142m",
            repo_file="model.safetensors",
            file_format="safetensors",
            approx_size="≈88 MB",
            description="DINOv2 ViT-S/14 (LVD-142M), timm layout: PartCATSeg's guidance backbone for training",
        ),
    )
}


# ------------------------------------------------------------------------------------------ errors
class WeightsError(RuntimeError):
    """Base class of the weight-registry errors."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """A named checkpoint is not on disk; the message says how to get it."""


class WeightsVerificationError(WeightsError):
    """A file's size, hash or format is wrong; it has been renamed ``.corrupt``."""


class WeightsDownloadError(WeightsError):
    """Fetching failed (offline, quota, ...); the message says how to fetch by hand."""


# ------------------------------------------------------------------------------------------ lookup
def weights_dir(directory: Optional[os.PathLike | str] = None) -> Path:
    """Where named checkpoints live: ``directory``, else ``$PARTCATSEG_WEIGHTS_DIR``, else ``weights/``.

    ``weights/`` is the source checkout's folder (where the official README puts them) when the
    package runs from a checkout, else ``~/.cache/partcatseg/weights`` for a plain install.
    """
    if directory:
        return Path(directory).expanduser()
    env = os.environ.get(WEIGHTS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    if (_REPO_ROOT / "setup.py").is_file():
        return _REPO_ROOT / "weights"
    return Path.home() / ".cache" / "partcatseg" / "weights"


def lookup(name: str) -> WeightSpec:
    """The registry entry ``name``; a ``KeyError`` lists the known names."""
    try:
        return WEIGHTS[name]
    except KeyError:
        raise KeyError(f"Unknown weights name {name!r}; known: {sorted(WEIGHTS)}") from None


def _spec_for_filename(filename: str) -> Optional[WeightSpec]:
    for spec in WEIGHTS.values():
        if spec.filename == filename:
            return spec
    return None


def manual_instructions(spec: WeightSpec, directory: Optional[os.PathLike | str] = None, *,
                        suggest_tool: bool = True) -> str:
    """How to get ``spec``: the download tool (unless it is what just failed), else the URL and the exact target."""
    target = weights_dir(directory) / spec.filename
    if not spec.available:
        return f"{spec.name} ({spec.description}) is {spec.note or 'not released'}; nothing to download."
    lines = [f"  python tools/download_weights.py {spec.name}", "or fetch it by hand:"] if suggest_tool else []
    lines += [
        f"  URL:    {spec.url}",
        f"  target: {target}",
    ]
    if spec.source == "google_drive":
        lines.append(f"  e.g.    gdown --continue {spec.url} -O {target}")
    else:
        lines.append(f"  e.g.    wget -c {spec.url} -O {target}")
    if spec.sha256:
        lines.append(f"  SHA-256 must be {spec.sha256}")
    return "\n".join(lines)


def resolve_weights(value: str, directory: Optional[os.PathLike | str] = None) -> str:
    """Turn ``MODEL.WEIGHTS`` into a file path.

    * "" stays "" (no weights);
    * an existing path is returned unchanged;
    * a registry name (``partcatseg_voc``) becomes ``<weights dir>/<file>``;
    * a missing path whose file name is a registry file (the configs' ``pretrain_weights/
      model_final_base.pth``, the official ``./weights/partcatseg_voc.pth``) is looked up in the
      weights directory.

    Raises :class:`WeightsNotFoundError` with download instructions when a named file is absent.
    """
    if not value:
        return ""
    path = Path(value).expanduser()
    if path.is_file():
        return str(path)
    spec = WEIGHTS.get(value) or _spec_for_filename(path.name)
    if spec is None:
        if os.sep in value or "/" in value or path.suffix:
            raise WeightsNotFoundError(
                f"MODEL.WEIGHTS={value!r}: no such file. Give an existing checkpoint path or one of the "
                f"named releases {sorted(WEIGHTS)} (see tools/download_weights.py --list)."
            )
        raise WeightsNotFoundError(
            f"MODEL.WEIGHTS={value!r} is neither a file nor a known weights name; known: {sorted(WEIGHTS)}"
        )
    candidate = weights_dir(directory) / spec.filename
    if candidate.is_file():
        return str(candidate)
    raise WeightsNotFoundError(
        f"MODEL.WEIGHTS={value!r} names {spec.name} ({spec.description}), but {candidate} does not exist. "
        f"Get it with\n{manual_instructions(spec, directory)}"
    )


# ------------------------------------------------------------------------------------------ checks
def sha256_of(path: os.PathLike | str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _format_problem(path: Path, file_format: str) -> Optional[str]:
    """Why ``path`` is not a ``file_format`` container (``None`` when it looks right)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "the file is empty"
    if head.lstrip().startswith(b"<"):
        return "the file is an HTML/XML page, not a checkpoint (Google Drive quota or permission page?)"
    if file_format == "safetensors":
        if len(head) < 9:
            return "too short for a safetensors file"
        (header_len,) = struct.unpack("<Q", head[:8])
        if head[8:9] != b"{" or header_len > path.stat().st_size:
            return "no safetensors header"
        return None
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None  # torch.save zip archive or legacy pickle
    return "not a torch checkpoint (neither a zip archive nor a pickle)"


def _read_checksums(directory: Path) -> dict:
    path = directory / CHECKSUMS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_checksums(directory: Path, data: dict) -> None:
    tmp = directory / (CHECKSUMS_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, directory / CHECKSUMS_FILE)


def _quarantine(path: Path) -> Path:
    corrupt = path.with_name(path.name + ".corrupt")
    os.replace(path, corrupt)
    return corrupt


def verify_file(spec: WeightSpec, path: os.PathLike | str, record: bool = True) -> str:
    """Check ``path`` against ``spec`` (size, SHA-256, format); return its SHA-256.

    Known values come from the registry, else from ``checksums.json`` next to the file. With
    ``record`` a first successful check of a file without known values is written there. On failure
    the file is renamed ``<file>.corrupt`` and :class:`WeightsVerificationError` is raised.
    """
    path = Path(path)
    directory = path.parent
    recorded = _read_checksums(directory).get(spec.filename, {})
    want_size = spec.size if spec.size is not None else recorded.get("size")
    want_sha = spec.sha256 if spec.sha256 else recorded.get("sha256")
    size = path.stat().st_size
    problem = None
    sha = ""
    if want_size is not None and size != want_size:
        problem = f"size {size} bytes, expected {want_size}"
    else:
        problem = _format_problem(path, spec.file_format)
    if problem is None:
        sha = sha256_of(path)
        if want_sha and sha != want_sha:
            problem = f"SHA-256 {sha}, expected {want_sha}"
            if not spec.sha256:
                problem += (
                    f" (recorded in {directory / CHECKSUMS_FILE} when the file was first verified; remove "
                    f"that entry if you replaced the file on purpose)"
                )
    if problem is not None:
        corrupt = _quarantine(path)
        raise WeightsVerificationError(f"{path}: {problem}; moved to {corrupt}")
    if record and not spec.sha256 and not recorded:
        data = _read_checksums(directory)
        data[spec.filename] = {"sha256": sha, "size": size, "name": spec.name}
        _write_checksums(directory, data)
    return sha


# ------------------------------------------------------------------------------------------ fetching
def _require_reachable(spec: WeightSpec, target: Path) -> None:
    problem = _unreachable(spec.url)
    if problem:
        by_hand = manual_instructions(spec, target.parent, suggest_tool=False)
        raise WeightsDownloadError(f"{spec.name}: {problem}; not downloading. Fetch it by hand:\n{by_hand}")


def fetch_huggingface(spec: WeightSpec, target: Path) -> None:
    """Download a hub file to ``target`` (``huggingface_hub`` resumes partial downloads)."""
    from huggingface_hub import hf_hub_download

    _require_reachable(spec, target)
    got = Path(hf_hub_download(repo_id=spec.repo_id, filename=spec.repo_file, local_dir=str(target.parent)))
    if got.resolve() != target.resolve():
        os.replace(got, target)


def fetch_google_drive(spec: WeightSpec, target: Path) -> None:
    """Download a Drive file to ``target`` (``gdown`` with ``resume=True`` continues a partial file)."""
    import gdown

    _require_reachable(spec, target)
    out = gdown.download(id=spec.drive_id, output=str(target), quiet=False, resume=True)
    if not out or not target.is_file():
        raise WeightsDownloadError(f"gdown did not produce {target}")


FETCHERS: dict[str, Callable[[WeightSpec, Path], None]] = {
    "huggingface": fetch_huggingface,
    "google_drive": fetch_google_drive,
}


def _offline() -> bool:
    return any(os.environ.get(k, "") not in ("", "0", "false", "False") for k in ("PARTCATSEG_OFFLINE", "HF_HUB_OFFLINE"))


def _unreachable(url: str, timeout: float = 3.0) -> Optional[str]:
    """Why the host of ``url`` cannot be reached (None if it can): one quick DNS + TCP probe.

    Without it an offline machine spends ~25 s in the hub client's five retries, printing a line for each.
    """
    import socket
    from urllib.parse import urlparse

    host = urlparse(url).hostname
    if not host:
        return None
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return None
    except OSError as err:
        return f"cannot reach {host} ({err.strerror or err})"


def download(
    name: str,
    directory: Optional[os.PathLike | str] = None,
    *,
    force: bool = False,
    offline: Optional[bool] = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Make ``<weights dir>/<file>`` of ``name`` present and verified; return its path.

    An existing file that verifies is kept (``force`` re-fetches it). One that fails verification
    is renamed ``.corrupt`` and fetched again; a freshly fetched file that fails is renamed too and
    reported. Offline (``offline=True``, ``$PARTCATSEG_OFFLINE`` or ``$HF_HUB_OFFLINE``) or after a
    network failure, :class:`WeightsDownloadError` carries the URL and target path to fetch by hand.
    """
    spec = lookup(name)
    directory = weights_dir(directory)
    target = directory / spec.filename
    if not spec.available:
        raise WeightsDownloadError(manual_instructions(spec, directory))
    if target.is_file() and not force:
        try:
            verify_file(spec, target)
            log(f"{spec.name}: {target} present and verified")
            return target
        except WeightsVerificationError as err:
            log(f"{spec.name}: {err}; fetching it again")
    elif target.is_file():  # --force: keep the previous file aside rather than deleting it
        os.replace(target, target.with_name(target.name + ".previous"))
    by_hand = manual_instructions(spec, directory, suggest_tool=False)
    if offline if offline is not None else _offline():
        raise WeightsDownloadError(f"{spec.name}: offline, not downloading. Fetch it by hand:\n{by_hand}")
    directory.mkdir(parents=True, exist_ok=True)
    log(f"{spec.name}: downloading {spec.url} ({spec.approx_size}) -> {target}")
    try:
        FETCHERS[spec.source](spec, target)
    except WeightsError:
        raise
    except Exception as err:  # network, quota, permissions: all need the same manual fallback
        raise WeightsDownloadError(
            f"{spec.name}: download failed ({type(err).__name__}: {err}). The partial file (if any) is kept "
            f"and resumed next time. To fetch it by hand:\n{by_hand}"
        ) from err
    if not target.is_file():
        raise WeightsDownloadError(f"{spec.name}: the download finished but {target} is missing")
    sha = verify_file(spec, target)
    log(f"{spec.name}: {target} verified (sha256 {sha})")
    return target


# ------------------------------------------------------------------------------------------ docs
def weights_table() -> str:
    """Markdown table of the registry (the README's table is generated from it)."""
    rows = [
        "| name | file | source | size | SHA-256 | config | what |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in WEIGHTS.values():
        if spec.source == "huggingface":
            source = f"[HF `{spec.repo_id}`]({spec.url})"
        elif spec.source == "google_drive":
            source = f"[Google Drive]({spec.url})"
        else:
            source = spec.note or "not released"
        if not spec.available:
            sha = "—"
        else:
            sha = f"`{spec.sha256[:16]}…`" if spec.sha256 else "unknown (recorded on first download)"
        size = f"{spec.size} B" if spec.size is not None else spec.approx_size
        config = f"`{spec.config}`" if spec.config else "(training init)"
        rows.append(f"| `{spec.name}` | `{spec.filename}` | {source} | {size} | {sha} | {config} | {spec.description} |")
    return "\n".join(rows)


def copy_into_place(src: os.PathLike | str, target: os.PathLike | str) -> None:
    """Copy ``src`` to ``target`` through a temporary file (used for local mirrors)."""
    target = Path(target)
    tmp = target.with_name(target.name + ".part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, target)
