"""``partcatseg-push-to-hub`` (``tools/push_to_hub.py``): upload a model to the Hugging Face hub in one command.

    python tools/push_to_hub.py output/toy_demo/model_final.pth me/partcatseg-toy      # convert + upload
    python tools/push_to_hub.py hub/partcatseg_voc me/partcatseg-voc --private          # an existing folder

A checkpoint (or a released weights name) is first converted into a pretrained folder (model.safetensors,
config.yaml, vocabulary.json and the model card README.md; ``--keep DIR`` keeps it), then the repository
is created if needed (``HfApi.create_repo``) and the four files uploaded (``HfApi.upload_folder``).
Log in first (``huggingface-cli login``) or set ``HF_TOKEN``. Offline, nothing is uploaded.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from .errors import UsageError, run_cli
from .overrides import parse_with_overrides

__all__ = ["main", "build_parser", "PROG"]

PROG = "partcatseg-push-to-hub"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Upload a pretrained folder, a checkpoint or a released model to a Hugging Face hub repository.",
        epilog="Trailing KEY VALUE pairs override config keys when a checkpoint is converted.",
    )
    p.add_argument("source", help="a pretrained folder (tools/convert_checkpoint.py), a checkpoint or a weights name")
    p.add_argument("repo_id", help="the hub repository, <user or org>/<name> (created if it does not exist)")
    p.add_argument("--config-file", default=None, help="a checkpoint's config (default: config.yaml beside it)")
    p.add_argument("--results", default=None, help="evaluation results for the model card (see convert_checkpoint)")
    p.add_argument("--title", default="", help="the card's title (default: the repository name)")
    p.add_argument("--description", default="", help="one sentence for the card")
    p.add_argument("--keep", default=None, help="write the converted folder here instead of a temporary folder")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", default=None, help="branch to upload to (default: main)")
    p.add_argument("--token", default=None, help="hub token (default: the logged-in token or $HF_TOKEN)")
    p.add_argument("--message", default=None, help="commit message")
    return p


def _main(argv: list) -> int:
    from ..inference.hub import command_line, convert_checkpoint, is_pretrained_folder, is_repo_id, offline, push_to_hub
    from ..weights import WeightsDownloadError
    args, opts = parse_with_overrides(build_parser(), argv)
    if not is_repo_id(args.repo_id):
        raise UsageError(f"{args.repo_id!r} is not a hub repository id (expected <user or org>/<name>)")
    if offline():  # before converting: nothing could be uploaded
        raise WeightsDownloadError("offline (HF_HUB_OFFLINE / PARTCATSEG_OFFLINE is set): not uploading; "
                                   "unset it to upload")
    with tempfile.TemporaryDirectory(prefix="partcatseg-push-") as tmp:
        folder = Path(args.source)
        if is_pretrained_folder(folder):
            if opts or args.config_file or args.results:
                raise UsageError(f"{args.source} is already a pretrained folder: KEY VALUE overrides, --config-file "
                                 f"and --results apply to checkpoints only (convert again to change them)")
        else:
            folder = Path(args.keep) if args.keep else Path(tmp) / args.repo_id.split("/")[-1]
            result = convert_checkpoint(
                args.source, folder, config_file=args.config_file, opts=opts, results=args.results,
                title=args.title or args.repo_id.split("/")[-1], description=args.description,
                command=command_line("python tools/push_to_hub.py", argv),
            )
            print(f"{PROG}: converted {args.source} into {result.folder}")
        url = push_to_hub(folder, args.repo_id, private=args.private or None, token=args.token,
                          revision=args.revision, commit_message=args.message)
    print(f"{PROG}: uploaded {folder.name} to {url}")
    print(f"load it with Predictor.from_pretrained({args.repo_id!r}) or partcatseg-app --model {args.repo_id}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point (the common error path: user errors in one line, exit 2 / 1)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_cli(_main, argv, PROG)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
