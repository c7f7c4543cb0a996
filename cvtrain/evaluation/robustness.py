"""Corruption robustness: the validation split under common corruptions, as Michaelis et al. (2019) report it.

Each validation image is corrupted at its own resolution (before the evaluation resize), with noise seeded by
``(seed, image id, corruption, severity)``, and scored by the task's own metric (pycocotools mAP, or mIoU).
With ``P_clean`` the clean score and ``P_cs`` the score under corruption ``c`` at severity ``s``:

- mPC (mean performance under corruption) = mean over corruptions of the mean over severities of ``P_cs``;
- rPC (relative performance under corruption) = mPC / ``P_clean``.

With fewer than the 15 x 5 settings the means run over those given (the report says which).
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvtrain.atomic import write_json
from cvtrain.data.index import DatasetIndex, ImageRecord
from cvtrain.evaluation.corruptions import CORRUPTIONS, SEVERITIES, corrupt, corruption_names
from cvtrain.evaluation.inference import Item, predict, primary_metric, score


class Corruptor:
    """An image alteration: one corruption at one severity, its noise seeded per image."""

    def __init__(self, name: str, severity: int, seed: int = 0):
        self.name, self.severity, self.seed = name, severity, seed
        self.number = list(CORRUPTIONS).index(name)

    def __call__(self, image: np.ndarray, record: ImageRecord) -> np.ndarray:
        rng = np.random.default_rng([self.seed, int(record.id), self.number, self.severity])
        return corrupt(image, self.name, self.severity, rng)


@dataclass
class RobustnessResult:
    """Scores under corruption: ``table[corruption][severity]`` of ``metric``, beside the clean score.

    ``mpc`` and ``rpc`` follow Michaelis et al.; ``scalars`` keeps every number the task scored per setting.
    """

    metric: str
    clean: float
    table: dict[str, dict[int, float]]
    scalars: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    clean_scalars: dict[str, float] = field(default_factory=dict)
    num_images: int = 0
    seed: int = 0
    seconds: float = 0.0
    out_dir: Path | None = None

    @property
    def severities(self) -> list[int]:
        return sorted({s for row in self.table.values() for s in row})

    def per_corruption(self) -> dict[str, float]:
        """Mean over severities, per corruption."""
        return {name: float(np.mean(list(row.values()))) for name, row in self.table.items()}

    @property
    def mpc(self) -> float:
        means = list(self.per_corruption().values())
        return float(np.mean(means)) if means else float("nan")

    @property
    def rpc(self) -> float:
        return self.mpc / self.clean if self.clean > 0 else float("nan")

    def mpc_of(self, name: str) -> float | None:
        """mPC of another scalar the task reports (e.g. ``segm_AP``), when every setting has it."""
        rows = [[values.get(name) for values in row.values()] for row in self.scalars.values()]
        if not rows or any(value is None for row in rows for value in row):
            return None
        return float(np.mean([np.mean(row) for row in rows]))

    def to_json(self) -> dict[str, Any]:
        extra = {}
        if "segm_AP" in self.clean_scalars:
            mpc = self.mpc_of("segm_AP")
            clean = self.clean_scalars["segm_AP"]
            extra["segm_AP"] = {"clean": clean, "mPC": mpc, "rPC": mpc / clean if mpc is not None and clean > 0
                                else None}
        return {
            "metric": self.metric, "clean": self.clean, "mPC": self.mpc, "rPC": _finite(self.rpc),
            "definition": "mPC: mean over corruptions of the mean over severities; rPC: mPC / clean "
                          "(Michaelis et al. 2019)",
            "corruptions": list(self.table), "severities": self.severities, "num_images": self.num_images,
            "seed": self.seed, "seconds": round(self.seconds, 1),
            "table": {name: {str(s): v for s, v in row.items()} for name, row in self.table.items()},
            "per_corruption": self.per_corruption(),
            "scalars": {name: {str(s): v for s, v in row.items()} for name, row in self.scalars.items()},
            "clean_scalars": self.clean_scalars, **extra,
        }

    def summary_table(self) -> str:
        """Plain-text table: a row per corruption, a column per severity, then the mean."""
        severities = self.severities
        width = max([len(name) for name in self.table] + [10])
        lines = [f"{'corruption':<{width}}  " + "  ".join(f"{'s' + str(s):>6}" for s in severities) + "    mean"]
        for name, row in self.table.items():
            lines.append(f"{name:<{width}}  " + "  ".join(f"{row[s]:6.4f}" for s in severities)
                         + f"  {np.mean(list(row.values())):6.4f}")
        lines.append(f"clean {self.metric} {self.clean:.4f}   mPC {self.mpc:.4f}   rPC {_percent(self.rpc)}"
                     f"   ({len(self.table)} corruptions x {len(severities)} severities, {self.num_images} images,"
                     f" {self.seconds:.0f} s)")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from cvtrain.evaluation.report import robustness_table

        return robustness_table(self)

    def write(self, out_dir: Path, *, tensorboard: bool = True) -> None:
        """``robustness.json`` and ``robustness.html`` (plot and table) in ``out_dir``, and TensorBoard scalars
        ``robustness/<corruption>`` over severity (0 is clean) with the plot, under ``out_dir/tensorboard``."""
        from cvtrain.evaluation.report import robustness_figure, robustness_html, write_text

        out_dir = Path(out_dir)
        self.out_dir = out_dir
        write_json(out_dir / "robustness.json", self.to_json())
        write_text(out_dir / "robustness.html", robustness_html(self))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out_dir / "tensorboard"))
            try:
                for name, row in self.table.items():
                    writer.add_scalar(f"robustness/{name}", self.clean, 0)
                    for severity, value in sorted(row.items()):
                        writer.add_scalar(f"robustness/{name}", value, severity)
                writer.add_scalar("robustness/mPC", self.mpc, 0)
                writer.add_scalar("robustness/rPC", _finite(self.rpc) or 0.0, 0)
                writer.add_figure("robustness/plot", robustness_figure(self), 0)
            finally:
                writer.close()


def run_robustness(task, config, index: DatasetIndex, *, corruptions: Sequence[str] | str | None = None,
                   severities: Sequence[int] | None = None, clean: dict[str, Any] | None = None, seed: int = 0,
                   progress: bool = True) -> RobustnessResult:
    """Score ``task`` on ``index`` (the validation split) under each corruption and severity.

    Args:
        task: a loaded task (detection, instance or semantic segmentation).
        config: its config (image size, batch size, workers, accelerator).
        index: the images to score.
        corruptions: names or families (``noise``, ``blur``, ``weather``, ``digital``); default all 15.
        severities: default 1 to 5.
        clean: the clean pass's metrics (``{"scalars": ...}``), when already computed; else it is run here.
        seed: the corruption noise seed.
        progress: a progress bar over all corrupted images.

    Raises:
        ValueError: an unknown corruption or a severity outside 1..5.
    """
    started = time.time()
    names = corruption_names(list(corruptions) if corruptions is not None and not isinstance(corruptions, str)
                             else corruptions)
    severities = sorted(set(severities or SEVERITIES))
    if any(s not in SEVERITIES for s in severities):
        raise ValueError(f"severities must be 1 to 5, got {severities}")
    metric = primary_metric(task)
    items = [Item(("clean", 0, image.id), image, None) for image in index.images] if clean is None else []
    items += [Item((name, severity, image.id), image, Corruptor(name, severity, seed))
              for name in names for severity in severities for image in index.images]
    predictions = predict(task, config, index, items, progress=progress, description="corruptions",
                          postfix=lambda item: f"{item.key[0]} {item.key[1]}" if item.key[0] != "clean" else "clean")
    grouped: dict[tuple[str, int], dict[int, Any]] = {}
    for (name, severity, image_id), payload in predictions.payload.items():
        grouped.setdefault((name, severity), {})[image_id] = payload
    if clean is None:
        clean = score(task, index, grouped.pop(("clean", 0)))
    table: dict[str, dict[int, float]] = {}
    scalars: dict[str, dict[int, dict[str, float]]] = {}
    for (name, severity), per_image in grouped.items():
        values = score(task, index, per_image)["scalars"]
        table.setdefault(name, {})[severity] = float(values[metric])
        scalars.setdefault(name, {})[severity] = {k: float(v) for k, v in values.items()}
    clean_scalars = {k: float(v) for k, v in clean.get("scalars", {}).items()}
    return RobustnessResult(metric=metric, clean=clean_scalars[metric], table={n: table[n] for n in names},
                            scalars={n: scalars[n] for n in names}, clean_scalars=clean_scalars,
                            num_images=len(index.images), seed=seed, seconds=time.time() - started)


def _finite(value: float) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _percent(value: float) -> str:
    return f"{100 * value:.1f} %" if math.isfinite(value) else "n/a"
