"""Prediction on files: batches through the model, predictions JSON, drawn images."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.io import encode_jpeg
from tqdm import tqdm

from cvtrain.atomic import write_bytes, write_json
from cvtrain.config import Config
from cvtrain.data.dataset import to_tensor
from cvtrain.data.files import IMAGE_SUFFIXES, read_image
from cvtrain.data.transforms import build_eval_transform
from cvtrain.errors import DataError
from cvtrain.results import PredictResult


def list_images(source: Path) -> list[Path]:
    """The image itself, or the images directly in a folder (by suffix), sorted.

    Raises:
        DataError: the source does not exist, or the folder holds no images.
    """
    if source.is_file():
        return [source]
    if source.is_dir():
        images = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if images:
            return images
        raise DataError("no images in folder", where=str(source), hint=f"supported: {', '.join(IMAGE_SUFFIXES)}")
    raise DataError("source not found", where=str(source), hint="give an image file or a folder of images to --source")


def pick_device(accelerator: str | None) -> torch.device:
    """CUDA when asked for (``gpu``/``cuda``) or, with ``auto``/None, when there is one; else the CPU."""
    if accelerator in ("gpu", "cuda") or (accelerator in (None, "auto") and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


@torch.no_grad()
def run_prediction(
    task, config: Config, source: Path, out_dir: Path, *, device: str | None = None, batch_size: int = 4
):
    """Write ``predictions.json`` (COCO results plus ``file_name``) and ``images/<name>.jpg`` into ``out_dir``.

    A task with ``write_prediction`` (semantic segmentation) writes its own files and records instead. An image
    that cannot be read (truncated, not an image, gone) is skipped and listed in ``skipped.json`` with its error;
    the others are predicted.

    Raises:
        DataError: no image of ``source`` could be read.
    """
    files = list_images(source)
    target_device = pick_device(device)
    task = task.to(target_device).eval()
    transform = build_eval_transform(config.augment, config.train.image_size, with_boxes=False)
    results, skipped, drawn, predicted = [], [], 0, 0
    threshold = config.eval.score_threshold
    for start in tqdm(range(0, len(files), batch_size), desc="predict", unit="batch"):
        chunk, originals, ids = [], [], []
        for position, path in enumerate(files[start:start + batch_size], start=start + 1):
            try:
                originals.append(read_image(path))
                chunk.append(path)
                ids.append(position)
            except DataError as error:
                skipped.append({"file": str(path), "error": error.one_line()})
        if not chunk:
            continue
        inputs = [to_tensor(transform(image=image)["image"]).to(target_device) for image in originals]
        outputs = task(inputs)
        for image_id, path, original, tensor, output in zip(ids, chunk, originals, inputs, outputs):
            predicted += 1
            meta = {"image_id": image_id, "orig_size": original.shape[:2], "size": tuple(tensor.shape[1:])}
            output = {k: v.cpu() for k, v in output.items()}
            if hasattr(task, "write_prediction"):  # tasks that write their own files (semantic masks)
                results.extend(task.write_prediction(path, original, output, meta, out_dir))
                continue
            for record in task.to_results(output, meta):
                results.append({**record, "file_name": str(path.name),
                                "category_name": task.class_names[task.category_ids.index(record["category_id"])]})
            drawn += int((output["scores"] >= threshold).sum())
            picture = task.draw_prediction(to_tensor(original), output, meta)
            write_bytes(out_dir / "images" / f"{path.stem}.jpg", encode_jpeg(picture, quality=90).numpy().tobytes())
    if not predicted:
        raise DataError(f"none of the {len(files)} image(s) could be read", where=str(source),
                        hint=f"first: {skipped[0]['file']}: {skipped[0]['error']}")
    if skipped:
        write_json(out_dir / "skipped.json", skipped)
    predictions = out_dir / "predictions.json"
    write_json(predictions, results)
    return PredictResult(
        out_dir=out_dir,
        predictions_file=predictions,
        num_images=predicted,
        num_detections=len(results),
        task=task.config.task,
        num_drawn=drawn,
        score_threshold=threshold,
        skipped=[item["file"] for item in skipped],
    )
