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

    A task with ``write_prediction`` (semantic segmentation) writes its own files and records instead.
    """
    files = list_images(source)
    target_device = pick_device(device)
    task = task.to(target_device).eval()
    transform = build_eval_transform(config.augment, config.train.image_size, with_boxes=False)
    results = []
    for start in tqdm(range(0, len(files), batch_size), desc="predict", unit="batch"):
        chunk = files[start:start + batch_size]
        originals = [read_image(path) for path in chunk]
        inputs = [to_tensor(transform(image=image)["image"]).to(target_device) for image in originals]
        outputs = task(inputs)
        for offset, (path, original, tensor, output) in enumerate(zip(chunk, originals, inputs, outputs)):
            image_id = start + offset + 1
            meta = {"image_id": image_id, "orig_size": original.shape[:2], "size": tuple(tensor.shape[1:])}
            output = {k: v.cpu() for k, v in output.items()}
            if hasattr(task, "write_prediction"):  # tasks that write their own files (semantic masks)
                results.extend(task.write_prediction(path, original, output, meta, out_dir))
                continue
            for record in task.to_results(output, meta):
                results.append({**record, "file_name": str(path.name),
                                "category_name": task.class_names[task.category_ids.index(record["category_id"])]})
            picture = task.draw_prediction(to_tensor(original), output, meta)
            write_bytes(out_dir / "images" / f"{path.stem}.jpg", encode_jpeg(picture, quality=90).numpy().tobytes())
    predictions = out_dir / "predictions.json"
    write_json(predictions, results)
    return PredictResult(
        out_dir=out_dir,
        predictions_file=predictions,
        num_images=len(files),
        num_detections=len(results),
        task=task.config.task,
    )
