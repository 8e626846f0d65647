#!/usr/bin/env python
"""Derive the small PartCLIPSeg parity reference ``tests/data/partclipseg_voc_parity.pt``.

The source is the reference fixture produced by running the official PartCLIPSeg code
(kaist-cvml/part-clipseg @ 8abceef) on one image with rule-filled weights
(``partclipseg_voc_fixture.pt``, 94 MB). The test needs only a small part of it: the image, the
labels, the token ids, the text features, sub-sampled logits/scores, the argmax maps and the
training loss terms (about 1.4 MB). Pixel values are kept as a SHA-256 of their float32 bytes plus
a crop, because they are reproduced bit for bit.

    python tools/make_partclipseg_test_data.py --fixture PATH/partclipseg_voc_fixture.pt
"""
from __future__ import annotations

import argparse
import hashlib
import os

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "tests", "data", "partclipseg_voc_parity.pt")

# channels kept (indices into the fixture's tensors)
LOGIT_CHANNELS = [0, 16, 41, 42, 48, 57, 58]  # parts "back", "head", last part; objects aeroplane, cat, tvmonitor; bg
PART_OBJ_CHANNELS = [0, 42, 43, 45, 61, 83, 115, 116]  # incl. cat's tail/head/torso, dog's head, person's head, bg
FEATURE_CLASSES = [43, 116]  # cat's head, background
STRIDE_LOGITS = 4
STRIDE_SCORES = 2


def sha256_of(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixture", required=True, help="partclipseg_voc_fixture.pt of the official run")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()

    fx = torch.load(args.fixture, map_location="cpu", weights_only=False)
    meta, inf, tr = fx["meta"], fx["inference"], fx["train"]
    image = fx["image_uint8_rgb_chw"]
    if not torch.equal(tr["mapper_image_bgr"], image.flip(0)):
        raise SystemExit("unexpected fixture: the training image is not the BGR copy of the test image")
    cat = [i for i, c in enumerate(meta["test_text_classes"]) if c.split("'s", 1)[0] == "cat"]
    pred_all_channels = cat + [61, 83, 85, 116]
    s, r = STRIDE_LOGITS, STRIDE_SCORES
    feats = inf["dec_part_obj_with_cond_embed_in"][FEATURE_CLASSES].clone()
    splits = (("inference", inf), ("train", tr))
    ref = {
        "source": (
            f"official PartCLIPSeg {meta['official_commit'][:7]} ({meta['config_file']}), rule-filled weights; "
            "derived from partclipseg_voc_fixture.pt by tools/make_partclipseg_test_data.py"
        ),
        "image": image.clone(),
        "height": int(image.shape[1]),
        "width": int(image.shape[2]),
        "oracle_category_id": int(meta["oracle_category_id"]),
        "inference_sem_seg_ids": torch.unique(inf["mapper_sem_seg"].long()),
        "test_text_classes": list(meta["test_text_classes"]),
        "test_obj_classes": list(meta["test_obj_classes"]),
        "test_prompts": list(meta["test_prompts"]),
        "train_prompts": list(meta["train_prompts"]),
        "trainable_param_names": list(meta["trainable_param_names"]),
        "n_params_total": int(meta["n_params_total"]),
        "n_params_trainable": int(meta["n_params_trainable"]),
        "pixel_values_sha256": {k: sha256_of(d["pixel_values"]) for k, d in splits},
        "pixel_values_crop": {k: d["pixel_values"][0, :, 160:192, 160:192].clone() for k, d in splits},
        "input_ids": {k: d["input_ids"].to(torch.int32) for k, d in splits},
        "attention_mask": {k: d["attention_mask"].to(torch.uint8) for k, d in splits},
        "conditional_embeddings": {k: d["conditional_embeddings"].clone() for k, d in splits},
        "logit_stride": s,
        "logit_channels": LOGIT_CHANNELS,
        "logits": inf["logits"][0, LOGIT_CHANNELS, ::s, ::s].clone(),
        "part_obj_logit_channels": PART_OBJ_CHANNELS,
        "part_obj_logits": inf["part_obj_logits"][0, PART_OBJ_CHANNELS, ::s, ::s].clone(),
        "part_obj_feature_classes": FEATURE_CLASSES,
        "part_obj_features": feats,
        "score_stride": r,
        "oracle_channels": cat,
        "oracle": inf["sem_seg"][cat, ::r, ::r].clone(),
        "pred_all_channels": pred_all_channels,
        "pred_all": inf["sem_seg_with_bg"][pred_all_channels, ::s, ::s].clone(),  # (logit stride)
        "pred_all_max": inf["sem_seg_with_bg"].amax(0).clone(),
        "oracle_argmax": inf["oracle_argmax"].to(torch.uint8),
        "pred_all_argmax": inf["pred_all_argmax"].to(torch.uint8),
        "object_argmax": inf["obj_sem_seg_with_bg"].to(torch.uint8),  # test object ids, 20 = background
        "train_sem_seg": tr["mapper_sem_seg"].to(torch.uint8),
        "train_obj_part_sem_seg": tr["mapper_obj_part_sem_seg"].to(torch.uint8),
        "train_loss": float(tr["loss_sem_seg"]),
        "bce_terms_in_call_order": [float(v) for v in tr["bce_terms_in_call_order"]],
        "loss_sep": float(tr["loss_sep"]),
        "loss_enh": float(tr["loss_enh"]),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save(ref, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
