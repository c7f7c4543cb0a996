"""How well ``cvtrain audit`` finds planted label errors, side by side with cleanlab on the same predictions.

    python scripts/bench_audit.py                       # 1,000 shapes images, 4 folds x 7 epochs, r = 5/10/20 %
    python scripts/bench_audit.py --images 400 --folds 3 --epochs 4 --rates 0.1   # a smaller configuration

Protocol (seeded; ``cvtrain/audit/planting.py`` has the details):

1. A clean detection set is generated with the quick start's shapes generator (squares, discs, triangles on noise,
   128 px), here ``--images`` images with up to 4 objects each (seed 0). Its labels are exactly right.
2. For each rate r, ``round(r * A)`` errors are planted into the ``A`` annotations, split evenly over class swaps,
   deleted boxes, boxes moved to an IoU of 0.4-0.7 with the original, and boxes added where there is no object
   (planting seed 1).
3. ``cvtrain audit`` trains ``--folds`` SSDlite models from scratch (``--epochs`` each) on the planted labels and
   scores every annotation with the out-of-fold predictions.
4. cleanlab 2.9's ObjectLab scores the same out-of-fold predictions (``predictions.json``, all detections above
   ``audit.min_score``): per box ``compute_swap_box_scores``, ``compute_badloc_box_scores``,
   ``compute_overlooked_box_scores``; per image ``get_label_quality_scores``; flags ``find_label_issues``.

Figures per kind, for both methods:
- AUROC: planted annotations of that kind against the clean annotations, ranked by the method's score for that
  kind (cleanlab has no score for spurious boxes: its worst subtype score of the box stands in). For *missing*,
  each deleted box is one positive scored by its best prediction (IoU >= 0.5, any class; none: lowest score) and
  every other prediction is a negative. ``missing_apart`` repeats it for the deleted boxes that overlap no remaining
  annotation by ``audit.missing_iou``: the generator draws shapes over one another, and a deleted box that shares
  its place with a remaining annotation is usually covered by that annotation's detection.
- precision at k (k = number planted of the kind) and recall at 2k on the same ranking; ties are broken by one
  seeded random order shared by both methods.
- image level: images with a planted error of the kind against images with none, ranked by the image score
  (ours: the highest record; cleanlab: ``1 - get_label_quality_scores``).
Also printed: how many images each method flags (ours: a flagged record, ``audit.flag_threshold``; cleanlab:
``find_label_issues``) and their precision and recall of images with any planted error; and each audit's wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KINDS = ("swapped", "badly_located", "missing", "spurious")


def make_dataset(root: Path, images: int) -> Path:
    from cvtrain.data.formats.shapes import make_shapes

    target = root / "annotations.json"
    if not target.is_file():
        make_shapes(root, num_images=images, image_size=128, seed=0, max_objects=4)
    return target


def spec_for(root: Path, annotations: str, args) -> dict:
    return {
        "task": "detection",
        "name": f"bench-audit-{Path(annotations).stem}",
        "data": {"format": "coco", "root": str(root), "annotations": annotations, "images": "images"},
        "model": {"name": "ssdlite320_mobilenet_v3_large", "options": {"score_thresh": 0.01}},
        "train": {"max_epochs": args.epochs, "batch_size": 8, "image_size": 128, "num_workers": 2,
                  "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0001},
                  "scheduler": {"name": "cosine", "warmup_steps": 50}},
        "augment": {"hflip": 0.5, "color_jitter": 0.2, "scale": [0.8, 1.2]},
        "trainer": {"accelerator": "cpu"},
        "checks": {"workers": 1},
        "audit": {"folds": args.folds, "max_epochs": args.epochs},
    }


# --------------------------------------------------------------------------------------------- metrics
def ranked_metrics(scores: np.ndarray, positive: np.ndarray, order_seed: int = 0) -> dict[str, float]:
    """AUROC (sklearn), precision at k and recall at 2k (k = positives), ties broken by a seeded order."""
    from sklearn.metrics import roc_auc_score

    k = int(positive.sum())
    if k == 0 or k == len(positive):
        return {"auroc": float("nan"), "p_at_k": float("nan"), "r_at_2k": float("nan"), "k": k}
    tiebreak = np.random.default_rng(order_seed).permutation(len(scores))
    order = np.lexsort((tiebreak, -scores))
    return {"auroc": float(roc_auc_score(positive, scores)), "p_at_k": float(positive[order[:k]].mean()),
            "r_at_2k": float(positive[order[:2 * k]].sum() / k), "k": k}


def iou_matrix(first, second) -> np.ndarray:
    from cvtrain.audit.scores import box_iou

    return box_iou(np.asarray(first).reshape(-1, 4), np.asarray(second).reshape(-1, 4))


def evaluate(out_dir: Path, noisy: dict, truth: dict) -> dict:
    """Both methods' figures on one audit's out-of-fold predictions."""
    from cleanlab.object_detection import filter as cl_filter
    from cleanlab.object_detection import rank as cl_rank

    audit = json.loads((out_dir / "audit.json").read_text())
    predictions = json.loads((out_dir / "predictions.json").read_text())
    min_score, missing_iou = audit["audit"]["min_score"], audit["audit"]["missing_iou"]
    categories = [c["id"] for c in noisy["categories"]]
    label_of = {c: i for i, c in enumerate(categories)}
    image_ids = [image["id"] for image in noisy["images"]]
    annotations_of: dict[int, list[dict]] = {i: [] for i in image_ids}
    for annotation in noisy["annotations"]:
        annotations_of[annotation["image_id"]].append(annotation)
    predictions_of: dict[int, list[dict]] = {i: [] for i in image_ids}
    for prediction in predictions:
        if prediction["score"] >= min_score:
            predictions_of[prediction["image_id"]].append(prediction)

    def xyxy(box):
        return [box[0], box[1], box[0] + box[2], box[1] + box[3]]

    labels, cl_predictions = [], []
    for image_id in image_ids:
        given = annotations_of[image_id]
        labels.append({"bboxes": np.array([xyxy(a["bbox"]) for a in given], dtype=np.float64).reshape(-1, 4),
                       "labels": np.array([label_of[a["category_id"]] for a in given], dtype=np.int64)})
        per_class = [np.zeros((0, 5)) for _ in categories]
        for prediction in predictions_of[image_id]:
            row = np.array([[*xyxy(prediction["bbox"]), prediction["score"]]])
            position = label_of[prediction["category_id"]]
            per_class[position] = np.vstack([per_class[position], row])
        cl_predictions.append(per_class)
    started = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        swap = cl_rank.compute_swap_box_scores(labels=labels, predictions=cl_predictions)
        badloc = cl_rank.compute_badloc_box_scores(labels=labels, predictions=cl_predictions)
        overlooked = cl_rank.compute_overlooked_box_scores(labels=labels, predictions=cl_predictions)
        cl_image = cl_rank.get_label_quality_scores(labels, cl_predictions, verbose=False)
        cl_flags = cl_filter.find_label_issues(labels, cl_predictions)
    cleanlab_seconds = time.time() - started

    # per annotation: kind scores of both methods
    ours_by_id = {r["annotation_id"]: r for r in audit["records"] if r["annotation_id"] is not None}
    rows = []  # (annotation id, planted kind or None, ours {kind: score}, cleanlab {kind: error})
    planted_kind = {i: kind for kind in ("swapped", "badly_located", "spurious") for i in truth[kind]}
    for position, image_id in enumerate(image_ids):
        for row, annotation in enumerate(annotations_of[image_id]):
            ours = ours_by_id[annotation["id"]]["kind_scores"]
            cl_swap, cl_loc = 1 - swap[position][row], 1 - badloc[position][row]
            cl = {"swapped": cl_swap, "badly_located": cl_loc, "spurious": max(cl_swap, cl_loc)}
            rows.append((planted_kind.get(annotation["id"]), ours, cl))
    results: dict = {"annotation": {}, "image": {}}
    for kind in ("swapped", "badly_located", "spurious"):
        chosen = [r for r in rows if r[0] in (None, kind)]
        positive = np.array([r[0] == kind for r in chosen])
        results["annotation"][kind] = {
            "ours": ranked_metrics(np.array([r[1][kind] for r in chosen]), positive),
            "cleanlab": ranked_metrics(np.array([r[2][kind] for r in chosen]), positive)}
    # missing: deleted boxes as positives, every other prediction as a negative
    missing_records: dict[int, list[dict]] = {}
    for record in audit["records"]:
        if record["kind"] == "missing":
            missing_records.setdefault(record["image_id"], []).append(record)
    deleted_of: dict[int, list[dict]] = {}
    for annotation in truth["missing"]:
        deleted_of.setdefault(annotation["image_id"], []).append(annotation)
    ours_scores, cl_scores, positive, apart = [], [], [], []
    for position, image_id in enumerate(image_ids):
        preds = predictions_of[image_id]
        boxes = [p["bbox"] for p in preds]
        ours_pred = np.zeros(len(preds))
        for record in missing_records.get(image_id, []):
            overlap = iou_matrix([record["suggested"]["bbox"]], boxes)[0] if boxes else np.zeros(0)
            same = [j for j in range(len(preds)) if overlap[j] > 0.98
                    and preds[j]["category_id"] == record["suggested"]["category_id"]]
            for j in same:
                ours_pred[j] = max(ours_pred[j], record["score"])
        cl_pred = 1 - np.nan_to_num(np.asarray(overlooked[position], dtype=np.float64), nan=1.0)
        deleted = [d["bbox"] for d in deleted_of.get(image_id, [])]
        matched = iou_matrix(deleted, boxes) >= 0.5 if deleted and boxes else \
            np.zeros((len(deleted), len(preds)), bool)
        remaining = [a["bbox"] for a in annotations_of[image_id]]
        crowded = (iou_matrix(deleted, remaining).max(axis=1) >= missing_iou
                   if deleted and remaining else np.zeros(len(deleted), bool))
        for row in range(len(deleted)):
            hits = np.flatnonzero(matched[row])
            apart.append(not crowded[row])
            ours_scores.append(ours_pred[hits].max() if len(hits) else -1.0)
            cl_scores.append(cl_pred[hits].max() if len(hits) else -1.0)
            positive.append(True)
        for j in range(len(preds)):
            if not matched[:, j].any():
                ours_scores.append(ours_pred[j])
                cl_scores.append(cl_pred[j])
                positive.append(False)
                apart.append(True)
    positive_array = np.array(positive)
    results["annotation"]["missing"] = {"ours": ranked_metrics(np.array(ours_scores), positive_array),
                                        "cleanlab": ranked_metrics(np.array(cl_scores), positive_array)}
    # the deleted boxes that overlap no remaining annotation by missing_iou: where a box-level audit can tell a
    # missed object from the detections of the annotations around it (the others share their place with one)
    keep = np.array(apart)
    results["annotation"]["missing_apart"] = {
        "ours": ranked_metrics(np.array(ours_scores)[keep], positive_array[keep]),
        "cleanlab": ranked_metrics(np.array(cl_scores)[keep], positive_array[keep])}
    # image level
    ours_image = {entry["image_id"]: entry["score"] for entry in audit["images"]}
    planted_images = {kind: set() for kind in KINDS}
    annotation_image = {a["id"]: a["image_id"] for a in noisy["annotations"]}
    for kind in ("swapped", "badly_located", "spurious"):
        planted_images[kind] = {annotation_image[i] for i in truth[kind]}
    planted_images["missing"] = {a["image_id"] for a in truth["missing"]}
    dirty = set().union(*planted_images.values())
    ours_array = np.array([ours_image.get(i, 0.0) for i in image_ids])
    cl_array = 1 - np.asarray(cl_image)
    for kind in (*KINDS, "any"):
        positives = dirty if kind == "any" else planted_images[kind]
        keep = np.array([(i in positives) or (i not in dirty) for i in image_ids])
        positive_array = np.array([i in positives for i in image_ids])[keep]
        results["image"][kind] = {"ours": ranked_metrics(ours_array[keep], positive_array),
                                  "cleanlab": ranked_metrics(cl_array[keep], positive_array)}
    flagged_ours = {r["image_id"] for r in audit["records"] if r["flagged"]}
    flagged_cl = {image_ids[i] for i in np.flatnonzero(cl_flags)}

    def precision_recall(flagged: set) -> dict:
        hits = len(flagged & dirty)
        return {"flagged": len(flagged), "precision": hits / len(flagged) if flagged else float("nan"),
                "recall": hits / len(dirty) if dirty else float("nan")}

    results["flags"] = {"ours": precision_recall(flagged_ours), "cleanlab": precision_recall(flagged_cl)}
    results["cleanlab_seconds"] = cleanlab_seconds
    return results


def print_table(rate: float, results: dict, counts: dict, seconds: float) -> None:
    print(f"\nr = {rate:.0%}: planted {sum(counts.values())} errors "
          f"({', '.join(f'{k} {v}' for k, v in counts.items())}); audit {seconds:.0f} s, "
          f"cleanlab scoring {results['cleanlab_seconds']:.1f} s")
    print(f"{'level':<11}{'kind':<15}{'k':>4}  {'AUROC ours/cl':>16}  {'P@k ours/cl':>14}  {'R@2k ours/cl':>14}")
    for level in ("annotation", "image"):
        for kind, pair in results[level].items():
            ours, cl = pair["ours"], pair["cleanlab"]
            print(f"{level:<11}{kind:<15}{ours['k']:>4}  {ours['auroc']:>7.3f} /{cl['auroc']:>7.3f}  "
                  f"{ours['p_at_k']:>6.3f} /{cl['p_at_k']:>6.3f}  {ours['r_at_2k']:>6.3f} /{cl['r_at_2k']:>6.3f}")
    for name, flags in results["flags"].items():
        print(f"flagged images ({name}): {flags['flagged']}, precision {flags['precision']:.3f}, "
              f"recall {flags['recall']:.3f} of images with a planted error")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=7, help="epochs of each fold model (default 7)")
    parser.add_argument("--rates", default="0.05,0.1,0.2")
    parser.add_argument("--out", default="runs/bench-audit")
    parser.add_argument("--rescore", action="store_true",
                        help="score again from the fold models already trained in --out (no training)")
    args = parser.parse_args()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import cvtrain
    from cvtrain.audit.planting import error_counts, plant_errors
    from cvtrain.quiet import quiet_libraries

    quiet_libraries()
    out = Path(args.out)
    root = out / f"shapes-{args.images}"
    clean = json.loads(make_dataset(root, args.images).read_text())
    print(f"dataset: {root} ({len(clean['images'])} images, {len(clean['annotations'])} annotations); "
          f"{args.folds} folds x {args.epochs} epochs of SSDlite from scratch; torch threads {_threads()}")
    summary = {}
    for rate in (float(r) for r in args.rates.split(",")):
        counts = error_counts(len(clean["annotations"]), rate)
        noisy, truth = plant_errors(clean, counts, seed=1)
        name = f"planted-{round(rate * 100):02d}.json"
        (root / name).write_text(json.dumps(noisy))
        (root / name.replace(".json", ".truth.json")).write_text(json.dumps(truth))
        audit_dir = out / f"audit-r{round(rate * 100):02d}"
        started = time.time()
        result = cvtrain.audit(spec_for(root, name, args), out=audit_dir, resume=True, skip_checks=args.rescore)
        seconds = time.time() - started
        results = evaluate(audit_dir, noisy, truth)
        results["audit_seconds"] = seconds
        results["audit_seconds_in_report"] = result.seconds
        summary[rate] = results
        print_table(rate, results, counts, seconds)
    (out / "bench.json").write_text(json.dumps(summary, indent=1, default=float))
    print(f"\nfigures: {out / 'bench.json'}")
    return 0


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
