"""Train the student from a teacher cache with DeepSpeed ZeRO-3; the teacher never loads.

    deepspeed --num_gpus 8 student/train.py --config configs/train/4drgpt.yaml --set student.model.path=...
    torchrun --standalone --nproc_per_node 2 student/train.py --config ... --set run.max_steps=10
    (CPU boxes: DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 deepspeed --num_gpus 2 ...; gloo is used)

Every step: data.global_batch / (data.batch_size x ranks) passes (gradient accumulation) of: next batch
(this rank's slice of a deterministic stream), the valid-sample counts of each auxiliary term summed
over ranks (exact global weighting within the pass), forward (uniform across ranks), backward; then
DeepSpeed's optimizer step. A checkpoint every run.checkpoint_every steps holds model, optimizer,
scheduler, step and the loader position, and counts once its `complete` marker exists; a rerun
resumes from the newest one, on the same or another number of ranks, exactly or not at all
(student/checkpoints.py plan_resume). At the end the weights are consolidated (gathered module by
module) and exported without the branch.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (deepspeed student/train.py): import from the project root, and not from student/ itself,
    # whose module names (config, datasets, ...) would shadow installed packages.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import warnings
from typing import TYPE_CHECKING, Callable

import torch

from configs.dataclass_io import add_config_arguments, config_from_args, to_yaml
from student.train_config import TrainConfig

if TYPE_CHECKING:
    from student.batch import StudentBatch

# torch.distributed's renamed collectives, called by DeepSpeed every step: one warning per call.
warnings.filterwarnings("ignore", message=r".*torch.distributed.\w+ is deprecated", category=FutureWarning)

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
# Loader workers fork after the tokenizer ran in the parent: its thread pool must not be inherited.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger("p4d.train")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, config_required=True)
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def lr_schedule(optimizer: torch.optim.Optimizer, max_steps: int, warmup_ratio: float):
    """Linear warmup over ceil(warmup_ratio x max_steps) optimizer steps, then cosine to 0 at max_steps."""
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, math.ceil(max_steps * warmup_ratio), max_steps)


def deepspeed_config(cfg, world: int, accumulation: int, universal: bool = False) -> dict:
    """universal: load a checkpoint in DeepSpeed's universal format (saved by another number of ranks)."""
    ds = json.loads(Path(cfg.run.deepspeed).read_text())
    if universal:
        ds["checkpoint"] = {**ds.get("checkpoint", {}), "load_universal": True}
    ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
    ds["gradient_accumulation_steps"] = accumulation
    ds["train_batch_size"] = cfg.data.batch_size * accumulation * world
    ds.setdefault("gradient_clipping", cfg.optim.grad_clip)
    return ds


def global_denominators(batch, model, world: int) -> dict[str, torch.Tensor]:
    """Valid samples of each auxiliary term over all ranks, / world (DeepSpeed averages rank losses)."""
    import torch.distributed as dist

    names = model.config.distilled_terms()
    if not names:
        return {}
    local = torch.tensor([float(batch.target_valid[f].sum()) if f in batch.target_valid else 0.0
                          for _, f in names])
    dist.all_reduce(local)
    return {name: local[i] / world for i, (name, _) in enumerate(names)}


def release_shm_segment_name(rank: int) -> None:
    """Unlink the name of this rank's DeepSpeed CPU all-reduce segment.

    DeepSpeed's shm comm op (the CPU accelerator's all-reduce) creates
    /dev/shm/deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank> (~69 MB per rank) and
    never unlinks it, so every run on a new port leaves its ranks' segments in /dev/shm: memory, kept
    until reboot (the test suite alone leaked ~1.4 GB per run). Each rank maps every other rank's
    segment inside init_distributed; once all ranks are past it the name can go. The mappings stay
    valid, and the memory is freed when the last rank exits, however it exits (a kill included).
    No such segment (GPU accelerators, ranks on several nodes): nothing to do."""
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR')}_{os.environ.get('MASTER_PORT')}_{rank}"
    Path("/dev/shm", name).unlink(missing_ok=True)


class Trainer:
    """This rank's part of a training run: `setup` in the constructor (the data first: a cache that does
    not fit the config is refused before any model is built; then the student under ZeRO-3 with its
    optimizer, schedule and loader), `resume`, `step`, `checkpoint`, `export`; `fit` runs them in turn.

    `target_provider`, when given, fills each batch's teacher targets (`batch.targets`,
    `batch.target_valid`) for the enabled terms at the start of its step, and the loader reads no
    teacher field: how a run with the teacher computing its targets online is built, from outside
    student/ (bench/online_teacher.py), to compare it with training from the cache. It sees the cached
    clips as stored, so augmentation, which changes the frames, is refused with it."""

    def __init__(self, cfg: TrainConfig, target_provider: Callable[[StudentBatch], None] | None = None):
        import deepspeed
        import torch._dynamo  # noqa: F401  (imported before zero.Init: torch 2.13 signature mismatch otherwise)
        import torch.distributed as dist
        from transformers.integrations import HfDeepSpeedConfig

        from student import checkpoints
        from student.cache_index import check_shapes, load_cache_index, record_summary
        from student.loader import StudentLoader
        from student.model import StudentModel, load_tokenizer

        cfg = cfg.with_teacher_heads()
        self.cfg = cfg
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        dist.barrier()  # every rank is through init_distributed: it has mapped every rank's shm segment
        release_shm_segment_name(self.rank)
        logging.basicConfig(level=logging.INFO if self.rank == 0 else logging.WARNING,
                            format=f"%(asctime)s rank{self.rank} %(levelname)s %(message)s")
        self.out = Path(cfg.run.out)
        self.checkpoints = self.out / "checkpoints"
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(to_yaml(cfg))

        fields = cfg.student.needed_fields()
        if target_provider is not None and (cfg.data.augment.hflip_prob or cfg.data.augment.crop_prob):
            raise ValueError("a target provider computes targets from the clips as cached: turn data.augment off")
        self.target_provider = target_provider
        self.index = load_cache_index(cfg.data.cache, cfg.data.split, cfg.data.datasets, cfg.data.teacher_id,
                                      fields, cfg.data.field_dtypes, training=not cfg.data.allow_evaluation_data)
        if self.index.teacher_id is not None:
            check_shapes(self.index.root, self.index.specs, fields, cfg.student.branch.hooks,
                         cfg.student.branch.latent_dim)
            cfg.data.check_frames(self.index.root, self.index.specs["frames"].shape[0])
        log.info("data: %s", record_summary(self.index))

        # Before any model: what the checkpoint to resume (if any) allows, and how many passes a step takes.
        self.digest = checkpoints.manifests_digest(self.index.records)
        self.resume_tag = checkpoints.latest_complete(self.checkpoints)
        marker = checkpoints.read_marker(self.checkpoints, self.resume_tag) if self.resume_tag else None
        plan = checkpoints.plan_resume(marker, cfg, self.world, self.digest, str(self.checkpoints / str(self.resume_tag)))
        for note in plan.notes:
            log.warning("resume: %s", note)
        self.universal = plan.universal
        if self.universal:
            if self.rank == 0:
                log.info("converting %s to DeepSpeed's universal format (saved by another number of ranks)",
                         self.resume_tag)
                checkpoints.universal_copy(self.checkpoints, self.resume_tag)
            dist.barrier()

        ds_config = deepspeed_config(cfg, self.world, plan.accumulation, self.universal)
        torch.manual_seed(cfg.run.seed)  # identical P4D-branch init on every rank
        # Kept alive while the trainer lives: from_pretrained builds the student under zero.Init.
        self._hf_deepspeed = HfDeepSpeedConfig(ds_config)
        self.model = StudentModel.from_config(cfg.student)
        self.tokenizer = load_tokenizer(cfg.student.model.path)
        self.accumulation = ds_config["gradient_accumulation_steps"]
        self.loader = StudentLoader(self.index, cfg.data, self.rank, self.world, self.model.adapter, self.tokenizer,
                                    () if target_provider else fields, accumulation=self.accumulation)
        self.max_steps = cfg.run.steps(len(self.loader.epoch_batches(0)), self.accumulation)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=self.model, optimizer=optimizer, model_parameters=params, config=ds_config,
            lr_scheduler=lr_schedule(optimizer, self.max_steps, cfg.optim.warmup_ratio),
        )
        log.info("%d optimizer steps of %d pass(es) x %d samples x %d ranks", self.max_steps, self.accumulation,
                 cfg.data.batch_size, self.world)
        self.steps_done = 0  # optimizer steps
        self.passes = 0  # forward / backward passes (accumulation of them make a step)

    def resume(self) -> None:
        """From the newest complete checkpoint, if any (found, checked and converted in setup): weights,
        optimizer, schedule, step, loader position."""
        from student import checkpoints

        tag = self.resume_tag
        if tag is None:
            return
        # The universal copy lives inside the checkpoint's directory, as the tag `universal`.
        where, name = (self.checkpoints / tag, checkpoints.UNIVERSAL) if self.universal else (self.checkpoints, tag)
        _, client = self.engine.load_checkpoint(str(where), tag=name)
        self.steps_done = client["step"]
        self.passes = self.steps_done * self.accumulation
        self.loader.load_state_dict(client["loader"])
        log.info("resumed from %s: step %d, loader at epoch %d, global position %d", tag, self.steps_done,
                 self.loader.epoch, self.loader.position)

    def step(self, batch):
        """One pass on this rank's batch; the auxiliary terms are weighted by their valid samples over
        all ranks. DeepSpeed updates the weights on the last pass of every `accumulation`."""
        if self.target_provider is not None:  # the teacher run online (bench/, tests/): targets computed here
            self.target_provider(batch)
        batch = batch.to(self.engine.device)  # cached targets arrive as stored: decoded on this device
        output = self.engine(batch, global_denominators(batch, self.model, self.world))
        self.engine.backward(output.loss)
        self.engine.step()
        self.passes += 1
        self.steps_done = self.passes // self.accumulation
        return output

    def checkpoint(self) -> None:
        """Every rank saves its partition; the checkpoint counts once rank 0 marks it complete."""
        import torch.distributed as dist

        from student import checkpoints

        tag = checkpoints.tag_for(self.steps_done)
        state = {"step": self.steps_done, "loader": self.loader.state_dict(), "config": to_yaml(self.cfg)}
        self.engine.save_checkpoint(str(self.checkpoints), tag=tag, client_state=state)
        dist.barrier()  # every rank's partition is on disk before the marker says so
        if self.rank == 0:
            run = checkpoints.run_record(self.cfg, self.world, self.accumulation, self.digest)
            checkpoints.mark_complete(self.checkpoints, tag, {"step": self.steps_done, "loader": self.loader.state_dict(),
                                                              "run": run})
            removed = checkpoints.prune(self.checkpoints, self.cfg.run.keep_checkpoints)
            log.info("checkpoint %s complete%s", tag, f" (pruned {removed})" if removed else "")
        dist.barrier()

    def export(self) -> None:
        """Gather the ZeRO-3 partitions (all ranks take part), then rank 0 writes the base model alone."""
        engine = self.engine
        full = engine._zero3_consolidated_16bit_state_dict() if engine.zero_optimization_partition_weights() \
            else engine.module.state_dict()
        if self.rank == 0:
            directory = self.out / "export"
            base = {k.removeprefix("base."): v for k, v in full.items() if k.startswith("base.")}
            self.model.export(directory, self.tokenizer, state_dict=base)
            log.info("exported the student without the P4D branch to %s (%d tensors)", directory, len(base))

    def fit(self) -> None:
        import torch.distributed as dist

        run = self.cfg.run
        self.resume()
        progress = StepLog(self.out, self.rank, self.max_steps, self.steps_done)
        stream = iter(self.loader)
        while self.steps_done < self.max_steps:
            start = time.perf_counter()
            batch = next(stream)
            data_wait = time.perf_counter() - start
            output = self.step(batch)
            stepped = self.passes % self.accumulation == 0
            progress.record(self.steps_done + (not stepped), self.loader.epoch, self.loader.last_positions, batch,
                            output, data_wait, time.perf_counter() - start, self.world,
                            self.scheduler.get_last_lr()[0], stepped, stepped and self.steps_done % run.log_every == 0)
            if stepped and (self.steps_done % run.checkpoint_every == 0 or self.steps_done == self.max_steps):
                self.checkpoint()
        progress.close()
        if run.export:
            self.export()
        dist.barrier()


class StepLog:
    """What a step leaves behind: each rank's sample ids, their epoch and global positions (in the
    epoch's order), the loss and its terms per pass in RUN/batches-rank<r>.jsonl (under the optimizer
    step the pass belongs to); on rank 0, at each step's last pass, every loss
    term, samples/s, data wait and learning rate to TensorBoard (RUN/tensorboard), a progress bar and,
    every log_every steps, a log line."""

    def __init__(self, out: Path, rank: int, max_steps: int, done: int):
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.rank = rank
        self.batches = open(out / f"batches-rank{rank}.jsonl", "a")
        self.tensorboard = SummaryWriter(str(out / "tensorboard")) if rank == 0 else None
        self.bar = tqdm(total=max_steps, initial=done, desc="train", unit="step", disable=rank != 0)

    def record(self, step: int, epoch: int, positions: list[int], batch, output, data_wait: float, seconds: float,
               world: int, lr: float, stepped: bool, log_line: bool) -> None:
        loss = output.loss.item()
        terms = {k: float(v) for k, v in output.terms.items()}
        self.batches.write(json.dumps({"step": step, "epoch": epoch, "positions": positions,
                                       "samples": batch.sample_ids, "loss": loss, "terms": terms}) + "\n")
        self.batches.flush()
        if self.rank != 0 or not stepped:
            return
        rate = batch.size * world / seconds
        for k, v in terms.items():
            self.tensorboard.add_scalar(f"loss/{k}", v, step)
        self.tensorboard.add_scalar("loss/total", loss, step)
        self.tensorboard.add_scalar("perf/samples_per_s", rate, step)
        self.tensorboard.add_scalar("perf/data_wait_s", data_wait, step)
        self.tensorboard.add_scalar("optim/lr", lr, step)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}")
        if log_line:
            log.info("step %d loss %.6g %s | %.2f samples/s, data wait %.3f s, lr %.2e", step, loss,
                     " ".join(f"{k} {v:.6g}" for k, v in terms.items()), rate, data_wait, lr)

    def close(self) -> None:
        self.bar.close()
        self.batches.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def main(argv=None) -> None:
    Trainer(config_from_args(TrainConfig, parse_args(argv))).fit()


if __name__ == "__main__":
    main()
