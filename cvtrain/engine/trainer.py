"""Maps a ``Config`` onto Lightning's ``Trainer``: precision, devices, strategy, callbacks, logging.

Lightning owns the loop, AMP and DDP; this module only decides their arguments.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.precision import MixedPrecision

from cvtrain.config import Config
from cvtrain.engine.acceleration import Acceleration
from cvtrain.engine.callbacks import LastCheckpoint, LossScaleMonitor, active_scaler
from cvtrain.engine.checkpoints import AtomicCheckpointIO, StepCheckpoints
from cvtrain.engine.monitoring import LoaderClock, TrainingLog
from cvtrain.engine.rundir import is_rank_zero
from cvtrain.errors import ConfigError

log = logging.getLogger("cvtrain")


def uses_cuda(config: Config) -> bool:
    """True when the run will train on CUDA GPUs (``--gpus``, ``--accelerator gpu``, or auto with a GPU)."""
    accelerator = config.trainer.accelerator
    if config.trainer.gpus:
        return True
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def launched_externally() -> bool:
    """True under torchrun, or ``srun`` with several tasks: they start one process per device themselves.

    As Lightning decides: a SLURM job named ``bash`` or ``interactive`` is an
    interactive allocation, in which Lightning starts the processes.
    """
    if torch.distributed.is_available() and torch.distributed.is_torchelastic_launched():
        return True
    interactive = os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive")
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and not interactive


def launcher_layout() -> tuple[int, int]:
    """``(processes per node, nodes)`` as torchrun or SLURM started them."""
    if torch.distributed.is_available() and torch.distributed.is_torchelastic_launched():
        per_node = int(os.environ["LOCAL_WORLD_SIZE"])
        return per_node, int(os.environ["WORLD_SIZE"]) // per_node
    nodes = int(os.environ.get("SLURM_NNODES", "1"))
    per_node = os.environ.get("SLURM_NTASKS_PER_NODE")
    return (int(per_node) if per_node else int(os.environ["SLURM_NTASKS"]) // nodes), nodes


def precision_arguments(config: Config) -> dict[str, Any]:
    """``--amp`` to Lightning: ``precision`` or a ``MixedPrecision`` plugin.

    - ``fp16``: FP16 autocast with a dynamic GradScaler (on CPU too, which is slow but real).
    - ``bf16``: bf16 autocast, no scaler.
    - ``auto``: fp16 on CUDA; bf16 on CPU, where FP16 kernels are slow.
    """
    amp = config.trainer.amp
    cuda = uses_cuda(config)
    if amp == "off":
        return {"precision": "32-true"}
    if amp == "auto":
        if not cuda and is_rank_zero():
            log.warning(
                "--amp on CPU uses bf16 autocast (FP16 on CPU is slow); pass --amp fp16 to force FP16 with loss scaling"
            )
        amp = "fp16" if cuda else "bf16"
    if amp == "bf16":
        return {"precision": "bf16-mixed"}
    if cuda:
        return {"precision": "16-mixed"}
    return {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]}


def device_arguments(config: Config) -> dict[str, Any]:
    """``--gpus``/``--accelerator``/``--devices``/``--num-nodes`` to Lightning, DDP when more than one process."""
    spec = config.trainer
    accelerator, devices = spec.accelerator, spec.devices
    if spec.gpus is not None:
        available = torch.cuda.device_count()
        if spec.gpus > available:
            raise ConfigError(f"--gpus {spec.gpus} asked for {spec.gpus} GPU(s) but this machine has {available}",
                              hint="lower --gpus, or use --accelerator cpu --devices N for DDP on the CPU")
        accelerator, devices = ("gpu", spec.gpus) if spec.gpus > 0 else ("cpu", 1)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--accelerator {accelerator}: this machine has no CUDA GPU that torch can use",
                          hint="use --accelerator cpu (or auto); check nvidia-smi and that torch is a CUDA build")
    if accelerator == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("--accelerator mps: this machine has no Apple GPU that torch can use",
                          hint="use --accelerator cpu (or auto)")
    num_nodes = spec.num_nodes
    if launched_externally():
        # torchrun/SLURM started the processes: one device per process, as many as it launched, on as many nodes.
        devices, nodes = launcher_layout()
        if num_nodes not in (1, nodes):
            raise ConfigError(f"--num-nodes {num_nodes} but the launcher started processes on {nodes} node(s)",
                              hint="leave --num-nodes out under torchrun/srun; cvtrain reads it from the launcher")
        num_nodes = nodes
    count = (
        devices
        if isinstance(devices, int)
        else (torch.cuda.device_count() if devices == "auto" and accelerator != "cpu" else 1)
    )
    strategy = spec.strategy
    if strategy == "auto" and (count > 1 or num_nodes > 1):
        strategy = "ddp_notebook" if _in_notebook() else "ddp"
    if config.train.sync_batchnorm and (count > 1 or num_nodes > 1) and not uses_cuda(config):
        # torch's SyncBatchNorm refuses CPU tensors, but only at the first training step, deep in the model.
        raise ConfigError("train.sync_batchnorm needs CUDA GPUs: SyncBatchNorm does not run on the CPU",
                          hint="set train.sync_batchnorm=false for DDP on the CPU")
    return {"accelerator": accelerator, "devices": devices, "num_nodes": num_nodes, "strategy": strategy}


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None and "IPKernelApp" in get_ipython().config
    except Exception:
        return False


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bars, showing ``train/loss`` as ``TrainingLog`` last read it (on the steps that log:
    reading it every step would make every step wait for the GPU), and closed when a run stops on an error so
    that the error prints on a line of its own rather than over a half-drawn validation bar."""

    redraw_seconds = 0.1  # tqdm's own minimum interval; Lightning redraws the bar after every batch

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.monotonic()
        bar = self.train_progress_bar
        last = bar is not None and batch_idx + 1 == bar.total
        if now - getattr(self, "_drawn", 0.0) < self.redraw_seconds and not last:
            return  # two terminal writes per step cost more than a fast GPU step can spare
        self._drawn = now
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        training_log = next((c for c in trainer.callbacks if isinstance(c, TrainingLog)), None)
        if training_log is not None and "train/loss" in training_log.values:
            metrics["train/loss"] = training_log.values["train/loss"]
        return metrics

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        stages = ("predict", "test", "val", "train")  # inner bars first: closing one moves the cursor back up
        bars = [getattr(self, f"_{stage}_progress_bar", None) for stage in stages]
        open_bars = [bar for bar in bars if bar is not None and not bar.disable]
        for bar in open_bars:
            bar.close()
        if open_bars and not any(bar.leave for bar in open_bars):
            print(file=sys.stderr, flush=True)


def build_trainer(
    config: Config,
    run_dir: Path,
    *,
    callbacks: list[pl.Callback] | None = None,
    monitor: str = "val/mAP",
    logger: bool = True,
    checkpoints: bool = True,
    **overrides: Any,
) -> pl.Trainer:
    """The Lightning ``Trainer`` for ``config``, writing into ``run_dir``.

    Besides checkpoints, the learning-rate monitor and the progress bar it adds ``engine.acceleration.Acceleration``
    (channels-last, compile, cudnn.benchmark) and, last, ``engine.monitoring.TrainingLog``, which reads what the
    steps left on the device once per logging step; ``engine.monitoring.LoaderClock`` times the data loader.
    """
    train = config.train
    saving: list[pl.Callback] = [ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor=monitor, mode="max", save_last=False, save_top_k=1,
        auto_insert_metric_name=False, enable_version_counter=False)] if checkpoints else []
    if checkpoints and train.checkpoint_every_n_steps:
        # Periodic checkpoints bound what a kill mid-epoch loses; the newest two stay.
        saving.append(StepCheckpoints(run_dir / "checkpoints", train.checkpoint_every_n_steps, keep=2))
    if checkpoints:
        # After the others: Lightning keeps checkpoint callbacks last and in order, so last.ckpt holds their state.
        saving.append(LastCheckpoint(run_dir / "checkpoints" / "last.ckpt"))
    arguments: dict[str, Any] = dict(
        default_root_dir=str(run_dir),
        max_epochs=train.max_epochs,
        max_steps=train.max_steps,
        gradient_clip_val=train.gradient_clip_val,
        accumulate_grad_batches=train.accumulate_grad_batches,
        sync_batchnorm=train.sync_batchnorm,
        deterministic=train.deterministic,
        check_val_every_n_epoch=train.val_every_n_epochs,
        log_every_n_steps=config.trainer.log_every_n_steps,
        fast_dev_run=config.trainer.fast_dev_run,
        callbacks=[
            *saving,
            *([LearningRateMonitor(logging_interval="step")] if logger else []),
            ProgressBar(),
            Acceleration(config),
            *(callbacks or []),
            TrainingLog(),  # after the callbacks that leave values on the device for it
        ],
        profiler=LoaderClock(),
        enable_checkpointing=checkpoints,
        logger=TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)
        if logger
        else False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    if train.limit_train_batches is not None:
        arguments["limit_train_batches"] = train.limit_train_batches
    if train.limit_val_batches is not None:
        arguments["limit_val_batches"] = train.limit_val_batches
    arguments.update(device_arguments(config))
    precision = precision_arguments(config)
    arguments.update(precision)
    arguments.setdefault("plugins", []).append(AtomicCheckpointIO())
    if SLURMEnvironment.detect():  # what Lightning would choose, with the spec's say on requeueing after a stop
        arguments["plugins"].append(SLURMEnvironment(auto_requeue=config.trainer.slurm_requeue))
    arguments.update(overrides)
    trainer = pl.Trainer(**arguments)
    if active_scaler(trainer) is not None:
        # First in the list: Lightning keeps the checkpoint callbacks last so that they save the others' state.
        trainer.callbacks.insert(0, LossScaleMonitor(config.trainer.max_bad_steps, config.trainer.min_loss_scale))
    return trainer
