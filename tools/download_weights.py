#!/usr/bin/env python
"""Fetch released checkpoints into weights/ (or $PARTCATSEG_WEIGHTS_DIR), verified and resumable.

    python tools/download_weights.py --list
    python tools/download_weights.py partcatseg_voc catseg_base
    python tools/download_weights.py partcatseg_voc --from-file ~/Downloads/partcatseg_voc.pth
    python tools/download_weights.py --verify

CAT-Seg files come from the Hugging Face hub (huggingface_hub), PartCATSeg files from Google Drive
(gdown). Offline (--offline, $PARTCATSEG_OFFLINE=1 or $HF_HUB_OFFLINE=1) or after a failed transfer,
it prints the URL and the exact path to put the file at. Exit status: 0 ok, 1 verification or
download failure, 2 usage error.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from partcatseg.cli.download_weights import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
