"""DDP on gloo: identical weights on every rank, the same training as one process with the global batch,
validation that counts every image once, torchrun launching ``cvtrain fit``, rank 0 alone choosing the run
directory, and the launcher environments (torchrun, SLURM) mapped onto Lightning.

Run as a script by torchrun, this file trains ``TinyTask`` and saves each rank's weights (see the bottom).
"""
from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from pytorch_lightning.utilities import rank_zero_only
from test_amp import TinyTask, detection_spec, tiny_config, tiny_data, tiny_net
from torch.utils.data import DistributedSampler

import cvtrain
from cvtrain.data.formats.shapes import make_shapes
from cvtrain.data.loading import build_index
from cvtrain.engine.rundir import choose_run_dir
from cvtrain.engine.trainer import build_trainer, device_arguments
from cvtrain.errors import ConfigError
from cvtrain.tasks.common import gather_by_image

HERE = Path(__file__).resolve()
GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
CLIP = 0.5  # below the gradient norm of the early steps, so clipping really acts (asserted)
LR = 0.05
# One thread per process: two gloo processes on a shared 2-core machine, each with two threads, crawl.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run(command: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def torchrun(*arguments: str, cwd: Path, processes: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone`` (a free rendezvous port, so parallel test runs do not collide)."""
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                *arguments], cwd=cwd)


# ------------------------------------------------- gathering predictions once
def _gather_worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        report = {}
        for size in range(1, 8):
            ids = [100 + number for number in range(size)]  # image ids are not positions
            # The sampler Lightning puts under validation loaders: it pads by repeating the first images.
            positions = list(DistributedSampler(ids, num_replicas=world, rank=rank, shuffle=False))
            items = [(ids[p], {"boxes": [ids[p] % 7], "rank": rank}) for p in positions]
            gathered = gather_by_image(items)
            report[size] = {"seen": len(positions), "ids": [i for i, _ in gathered],
                            "boxes": [payload["boxes"] for _, payload in gathered]}
        Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("world", [2, 3])
def test_gather_by_image_keeps_every_image_exactly_once(world, tmp_path):
    # Forked, not spawned: a spawned worker re-imports torch, Lightning and cvtrain (seconds each).
    torch.multiprocessing.start_processes(_gather_worker, args=(world, free_port(), str(tmp_path)), nprocs=world,
                                          start_method="fork")
    for rank in range(world):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for size, seen in report.items():
            size = int(size)
            expected = [100 + number for number in range(size)]
            assert seen["ids"] == expected, (rank, size)  # every rank holds the full, deduplicated list
            assert seen["boxes"] == [[i % 7] for i in expected]
            assert seen["seen"] * world >= size  # the padding really repeats images when world does not divide size
            assert (seen["seen"] * world > size) == (size % world != 0)


# --------------------------------------------- DDP trains as one big batch does
def reference_weights(batch_size: int, lr: float, steps: int) -> tuple[dict[str, torch.Tensor], list[float]]:
    """A plain PyTorch loop: SGD with momentum and weight decay, gradient norm clipped to ``CLIP``."""
    net = tiny_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0001)
    images, labels = tiny_data()
    norms = []
    for step in range(steps):
        batch = slice(step * batch_size, (step + 1) * batch_size)
        optimizer.zero_grad()
        F.cross_entropy(net(images[batch]), labels[batch]).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP)))
        optimizer.step()
    return net.state_dict(), norms


def lightning_weights(root: Path, **train) -> dict[str, torch.Tensor]:
    config = tiny_config(root, **train)
    task = TinyTask(config)
    build_trainer(config, root, logger=False, checkpoints=False).fit(task)
    return task.net.state_dict()


def assert_same_weights(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float) -> None:
    assert found.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(found[name], expected[name], atol=atol, rtol=0, msg=name)


def test_two_processes_train_as_one_with_twice_the_batch(tmp_path):
    """2 processes x batch 4 = 1 x batch 8 = 1 x batch 4 x 2 accumulated, with clipping and the linear lr rule.

    ``scale_lr_with_batch`` with ``base_batch_size`` 4 doubles the lr for a global batch of 8 in all three,
    so the plain loop runs at 2 x lr; at 1 x lr it ends elsewhere (checked), so the rule is really applied.
    """
    steps = 4
    train = {"batch_size": 4, "max_steps": steps, "max_epochs": 1, "gradient_clip_val": CLIP,
             "optimizer": {"lr": LR, "scale_lr_with_batch": True, "base_batch_size": 4}}
    torchrun(str(HERE), str(tmp_path), json.dumps(train), cwd=tmp_path)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # bit-identical on every rank

    expected, norms = reference_weights(8, 2 * LR, steps)
    assert max(norms) > CLIP  # clipping acted in this run
    assert_same_weights(ranks[0], expected, atol=1e-5)
    assert_same_weights(lightning_weights(tmp_path / "one", **{**train, "batch_size": 8}), expected, atol=1e-5)
    accumulated = lightning_weights(tmp_path / "accumulated", **train, accumulate_grad_batches=2)
    assert_same_weights(accumulated, expected, atol=1e-5)
    unscaled, _ = reference_weights(8, LR, steps)
    assert max((unscaled[n] - expected[n]).abs().max() for n in expected) > 1e-3


# ---------------------------------------- torchrun, `cvtrain fit`, validation
def write_spec(folder: Path, **train) -> Path:
    """Shapes with 20 images: 15 to train, 5 (odd) to validate."""
    spec = detection_spec(folder / "shapes", **train)
    spec["data"]["val_fraction"] = 0.25
    spec["data"]["options"]["num_images"] = 20
    # One image per validation batch, in every world size, so that no image's numbers depend on its batch mates.
    spec["eval"]["batch_size"] = 1
    make_shapes(folder / "shapes", **spec["data"]["options"])  # once, before several processes read it
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def torchrun_fit(tmp_path_factory):
    """``torchrun --nproc_per_node 2 -m cvtrain fit`` where ``runs/tiny`` already holds a run."""
    folder = tmp_path_factory.mktemp("torchrun")
    spec = write_spec(
        folder,
        max_epochs=3,
        batch_size=4,
        optimizer={"name": "sgd", "lr": 0.02, "scale_lr_with_batch": True, "base_batch_size": 4},
    )
    (folder / "runs" / "tiny").mkdir(parents=True)
    (folder / "runs" / "tiny" / "config.yaml").write_text("earlier run\n")
    # `cvtrain fit` as the CLI runs it, plus a callback that records which images each rank trained on (bottom)
    done = torchrun(str(HERE), "fit", "-c", str(spec), "--accelerator", "cpu", cwd=folder)
    return folder, done


class SeenImages(pl.Callback):
    """The image ids of every training batch this rank ran, per epoch; ``seen-rank<r>.json`` in the working
    directory at the end of training."""

    def __init__(self) -> None:
        self.seen: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.setdefault(trainer.current_epoch, []).extend(int(target["image_id"]) for target in batch[1])

    def on_train_end(self, trainer, pl_module) -> None:
        Path(f"seen-rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


def test_torchrun_launches_cvtrain_fit_once_per_process(torchrun_fit):
    folder, done = torchrun_fit
    assert sorted(p.name for p in (folder / "runs").iterdir()) == ["tiny", "tiny-2"]  # nothing else created
    assert (folder / "runs" / "tiny" / "config.yaml").read_text() == "earlier run\n"
    run_dir = folder / "runs" / "tiny-2"
    assert done.stdout.count("run directory: runs/tiny-2") == 1  # rank 0 alone reports
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    # 15 images, 2 processes x batch 4: 2 steps per epoch. Had cvtrain started its own processes under
    # torchrun, there would be 4 of them and 1 step per epoch, and the linear rule would give 4 x lr.
    assert checkpoint["global_step"] == 6
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["initial_lr"] == pytest.approx(0.02 * 2)
    assert len(json.loads((run_dir / "metrics.json").read_text())["history"]) == 3  # a validation each epoch


def test_each_rank_trains_on_its_own_half_of_the_images_and_together_on_all(torchrun_fit):
    """What one process cannot produce: per epoch, rank 0 and rank 1 ran different images, together every training
    image; the only image both ran is the one the distributed sampler repeats to pad 15 images to 2 x 8."""
    folder, _ = torchrun_fit
    config = cvtrain.load_config(folder / "tiny.yaml")
    train_ids = {image.id for image in build_index(config.data).split(config.data.train_split).images}
    assert len(train_ids) == 15
    seen = [json.loads((folder / f"seen-rank{rank}.json").read_text()) for rank in range(2)]
    assert sorted(seen[0]) == sorted(seen[1]) == ["0", "1", "2"]
    for epoch in ("0", "1", "2"):
        first, second = seen[0][epoch], seen[1][epoch]
        assert len(first) == len(set(first)) == len(second) == len(set(second)) == 8  # 2 steps x batch 4 each
        assert set(first) | set(second) == train_ids
        assert len(set(first) & set(second)) == 1  # the padding
    assert seen[0]["0"] != seen[0]["1"] != seen[0]["2"]  # a new shuffle each epoch


def test_validation_under_ddp_equals_one_process_exactly(torchrun_fit, tmp_path):
    """5 validation images over 2 processes: the sampler gives each 3, repeating one; it must count once."""
    folder, _ = torchrun_fit
    checkpoint = folder / "runs" / "tiny-2" / "checkpoints" / "last.ckpt"
    single = cvtrain.evaluate(checkpoint=checkpoint, out=tmp_path / "one", accelerator="cpu", devices=1)
    run([sys.executable, "-m", "cvtrain", "evaluate", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "two"),
         "--accelerator", "cpu", "--devices", "2"], cwd=tmp_path)
    written = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert single.num_images == written["num_images"] == 5
    assert single.metrics["AP50"] > 0  # real detections to count, so a repeated image would change the score
    assert written["scalars"] == single.metrics
    assert written["per_class"] == single.per_class
    # The last validation inside the torchrun fit ran the same weights under DDP too.
    last = json.loads((folder / "runs" / "tiny-2" / "metrics.json").read_text())["last"]
    model_scores = {k: v for k, v in single.metrics.items() if not k.startswith("baseline_")}  # fit: baseline.json
    assert {k: last[k] for k in model_scores} == model_scores


# ------------------------------------------------- rank 0 chooses, others wait
def test_other_ranks_neither_check_nor_create_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    (tmp_path / "runs" / "tiny" / "config.yaml").write_text("rank 0 was first\n")
    assert choose_run_dir(None, "tiny") == Path("runs/tiny-2")
    with pytest.raises(cvtrain.CvtrainError, match="already holds a run"):
        choose_run_dir(tmp_path / "runs" / "tiny", "tiny")
    monkeypatch.setattr(rank_zero_only, "rank", 1)  # what Lightning reads from RANK in a torchrun worker
    # Rank 0 may have written its config already: rank 1 must neither fail on it nor pick another directory.
    assert choose_run_dir(tmp_path / "runs" / "tiny", "tiny") == tmp_path / "runs" / "tiny"
    assert choose_run_dir(None, "tiny") == Path("runs/tiny")  # a guess; MetricsFile.setup broadcasts rank 0's
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["tiny", "tiny-2"]  # rank 0's claim alone


# ------------------------------------------------------ launcher environments
def test_launcher_environments_map_onto_lightning(tmp_path, monkeypatch):
    config = tiny_config(tmp_path)
    for name in ("TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_NNODES", "SLURM_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)
    assert device_arguments(config)["strategy"] == "auto"
    config.trainer.devices = 2
    assert device_arguments(config) == {"accelerator": "cpu", "devices": 2, "num_nodes": 1, "strategy": "ddp"}
    config.trainer.devices = "auto"

    # torchrun --nnodes 2 --nproc_per_node 4: four processes here, eight in all
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert device_arguments(config) == {"accelerator": "cpu", "devices": 4, "num_nodes": 2, "strategy": "ddp"}
    config.trainer.num_nodes = 3
    with pytest.raises(ConfigError, match="--num-nodes 3 but the launcher started processes on 2 node"):
        device_arguments(config)
    config.trainer.num_nodes = 1
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")

    # srun --nodes 3 --ntasks-per-node 2
    monkeypatch.setenv("SLURM_NTASKS", "6")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    monkeypatch.setenv("SLURM_NNODES", "3")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    assert device_arguments(config) == {"accelerator": "cpu", "devices": 2, "num_nodes": 3, "strategy": "ddp"}
    # An interactive allocation (salloc; job name 'interactive'): Lightning starts the processes itself.
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")
    assert device_arguments(config)["num_nodes"] == 1


def test_sync_batchnorm_on_cpu_ddp_is_a_clear_error(tmp_path):
    config = tiny_config(tmp_path, sync_batchnorm=True)
    assert device_arguments(config)["strategy"] == "auto"  # one process: nothing to synchronise, allowed
    config.trainer.devices = 2
    with pytest.raises(ConfigError, match="sync_batchnorm needs CUDA GPUs"):
        device_arguments(config)


# ------------------------------------------------------------------ GPUs
@pytest.mark.gpu
@pytest.mark.skipif(GPUS < 1, reason="needs CUDA")
def test_gpus_flag_selects_ddp_from_two_gpus(tmp_path):
    config = tiny_config(tmp_path)
    config.trainer.gpus = 1
    assert device_arguments(config) == {"accelerator": "gpu", "devices": 1, "num_nodes": 1, "strategy": "auto"}
    if GPUS >= 2:
        config.trainer.gpus = 2
        assert device_arguments(config) == {"accelerator": "gpu", "devices": 2, "num_nodes": 1, "strategy": "ddp"}


@pytest.mark.gpu
@pytest.mark.skipif(GPUS < 2, reason="needs 2 GPUs")
def test_two_gpus_train_as_one_with_twice_the_batch(tmp_path):
    train = {"batch_size": 4, "max_steps": 4, "max_epochs": 1, "gradient_clip_val": CLIP,
             "optimizer": {"lr": LR, "scale_lr_with_batch": True, "base_batch_size": 4}}
    torchrun(str(HERE), str(tmp_path), json.dumps(train), "gpu", cwd=tmp_path)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    expected, _ = reference_weights(8, 2 * LR, 4)
    for weights in ranks:  # a CPU reference against cuDNN's kernels: other summation orders, hence 1e-4
        assert_same_weights({k: v.cpu() for k, v in weights.items()}, expected, atol=1e-4)


if __name__ == "__main__" and sys.argv[1] == "fit":  # under torchrun: `cvtrain fit`, recording the images seen
    import cvtrain.api
    from cvtrain.cli import main

    cvtrain_callbacks = cvtrain.api.fit_callbacks
    cvtrain.api.fit_callbacks = lambda *args, **kwargs: [*cvtrain_callbacks(*args, **kwargs), SeenImages()]
    sys.exit(main(sys.argv[1:]))

if __name__ == "__main__":  # under torchrun, from the tests above: train TinyTask, save each rank's weights
    out, train = Path(sys.argv[1]), json.loads(sys.argv[2])
    config = tiny_config(out, **copy.deepcopy(train))
    if len(sys.argv) > 3:
        config.trainer.accelerator = sys.argv[3]
        torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions round to 10 bits; the comparison is at 1e-5
    task = TinyTask(config)
    trainer = build_trainer(config, out, logger=False, checkpoints=False)
    trainer.fit(task)
    torch.save(task.net.state_dict(), out / f"rank{trainer.global_rank}.pt")
