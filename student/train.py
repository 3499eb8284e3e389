"""Train the student from a teacher cache with DeepSpeed ZeRO-3; the teacher never loads.

    deepspeed --num_gpus 8 student/train.py --config configs/train/demo.yaml
    torchrun --standalone --nproc_per_node 2 student/train.py --config ... --set run.max_steps=10
    (CPU boxes: DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 deepspeed --num_gpus 2 ...; gloo is used)

Every step: next batch (this rank's slice of a deterministic stream), the valid-sample counts of each
auxiliary term summed over ranks (exact global weighting), forward (uniform across ranks), backward,
step. A checkpoint every run.checkpoint_every steps holds model, optimizer, scheduler, step and the
loader position, and counts once its `complete` marker exists; a rerun resumes from the newest one.
At the end the weights are consolidated (gathered module by module) and exported without the branch.
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

if __name__ == "__main__":
    # Run as a script, sys.path[0] is student/; the packages live one level up.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import warnings

import torch

# torch.distributed's renamed collectives, called by DeepSpeed every step: one warning per call.
warnings.filterwarnings("ignore", message=r".*torch.distributed.\w+ is deprecated", category=FutureWarning)

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
# Loader workers fork after the tokenizer ran in the parent: its thread pool must not be inherited.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger("p4d.train")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training YAML (configs/train/*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set run.max_steps=20 (repeatable)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def lr_lambda(max_steps: int, warmup_ratio: float):
    warmup = max(1, math.ceil(max_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, max_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def deepspeed_config(cfg, world: int) -> dict:
    ds = json.loads(Path(cfg.run.deepspeed).read_text())
    accumulation = ds.get("gradient_accumulation_steps", 1)
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


def main(argv=None) -> None:
    args = parse_args(argv)
    import deepspeed
    import torch._dynamo  # noqa: F401  (imported before zero.Init: torch 2.13 signature mismatch otherwise)
    import torch.distributed as dist
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm
    from transformers.integrations import HfDeepSpeedConfig

    from student import checkpoints
    from student.cache_index import check_shapes, load_cache_index, record_summary
    from student.loader import StudentLoader
    from student.model import StudentModel, load_tokenizer
    from student.train_config import dump_train_config, load_train_config

    cfg = load_train_config(args.config, args.set)
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dist.barrier()  # every rank is through init_distributed: it has mapped every rank's shm segment
    release_shm_segment_name(rank)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(message)s")
    out = Path(cfg.run.out)
    ckpt_dir = out / "checkpoints"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_train_config(cfg))

    # Data first: a cache that does not fit the config is refused before any model is built.
    student_cfg = cfg.student
    fields = student_cfg.needed_fields()
    index = load_cache_index(cfg.data.cache, cfg.data.split, cfg.data.datasets, cfg.data.teacher_id,
                             fields, cfg.data.field_dtypes, training=not cfg.data.allow_evaluation_data)
    if index.teacher_id is not None:
        check_shapes(index.root, index.specs, fields, student_cfg.branch.hooks, student_cfg.branch.latent_dim)
    log.info("data: %s", record_summary(index))

    ds_config = deepspeed_config(cfg, world)
    torch.manual_seed(cfg.run.seed)  # identical P4D-branch init on every rank
    hf_ds = HfDeepSpeedConfig(ds_config)  # noqa: F841  (kept alive: from_pretrained builds under zero.Init)
    model = StudentModel.from_config(student_cfg)
    tokenizer = load_tokenizer(student_cfg.model.path)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=cfg.optim.betas,
                                  weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.run.max_steps, cfg.optim.warmup_ratio))
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, model_parameters=params, config=ds_config
    )
    loader = StudentLoader(index, cfg.data, rank, world, model.adapter, tokenizer, fields)

    step = 0
    tag = checkpoints.latest_complete(ckpt_dir)
    if tag is not None:
        _, client = engine.load_checkpoint(str(ckpt_dir), tag=tag)
        step = client["step"]
        loader.load_state_dict(client["loader"])
        log.info("resumed from %s: step %d, loader at epoch %d batch %d", tag, step, loader.epoch, loader.batch)

    writer = SummaryWriter(str(out / "tensorboard")) if rank == 0 else None
    batch_log = open(out / f"batches-rank{rank}.jsonl", "a")
    bar = tqdm(total=cfg.run.max_steps, initial=step, desc="train", unit="step", disable=rank != 0)
    stream = iter(loader)
    while step < cfg.run.max_steps:
        t0 = time.perf_counter()
        batch = next(stream)
        data_wait = time.perf_counter() - t0
        output = engine(batch, global_denominators(batch, model, world))
        engine.backward(output.loss)
        engine.step()
        step += 1
        seconds = time.perf_counter() - t0
        terms = {k: float(v) for k, v in output.terms.items()}
        batch_log.write(json.dumps({"step": step, "samples": batch.sample_ids, "loss": output.loss.item()}) + "\n")
        batch_log.flush()
        if rank == 0:
            lr = scheduler.get_last_lr()[0]
            for k, v in terms.items():
                writer.add_scalar(f"loss/{k}", v, step)
            writer.add_scalar("loss/total", output.loss.item(), step)
            writer.add_scalar("perf/samples_per_s", batch.size * world / seconds, step)
            writer.add_scalar("perf/data_wait_s", data_wait, step)
            writer.add_scalar("optim/lr", lr, step)
            bar.update(1)
            bar.set_postfix(loss=f"{output.loss.item():.4f}")
            if step % cfg.run.log_every == 0:
                log.info("step %d loss %.4f %s | %.2f samples/s, data wait %.3f s, lr %.2e", step,
                         output.loss.item(), " ".join(f"{k} {v:.4f}" for k, v in terms.items()),
                         batch.size * world / seconds, data_wait, lr)
        if step % cfg.run.checkpoint_every == 0 or step == cfg.run.max_steps:
            save_checkpoint(engine, ckpt_dir, step, loader, cfg, rank)
    bar.close()
    batch_log.close()
    if writer is not None:
        writer.close()

    if cfg.run.export:
        export(engine, model, tokenizer, out / "export", rank)
    dist.barrier()


def save_checkpoint(engine, ckpt_dir: Path, step: int, loader, cfg, rank: int) -> None:
    import torch.distributed as dist

    from student import checkpoints
    from student.train_config import dump_train_config

    tag = checkpoints.tag_for(step)
    state = {"step": step, "loader": loader.state_dict(), "config": dump_train_config(cfg)}
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=state)
    dist.barrier()  # every rank's partition is on disk before the marker says so
    if rank == 0:
        checkpoints.mark_complete(ckpt_dir, tag, {"step": step, "loader": loader.state_dict()})
        removed = checkpoints.prune(ckpt_dir, cfg.run.keep_checkpoints)
        log.info("checkpoint %s complete%s", tag, f" (pruned {removed})" if removed else "")
    dist.barrier()


def export(engine, model, tokenizer, directory: Path, rank: int) -> None:
    """Gather the ZeRO-3 partitions (all ranks take part), then rank 0 writes the base model alone."""
    full = engine._zero3_consolidated_16bit_state_dict() if engine.zero_optimization_partition_weights() \
        else engine.module.state_dict()
    if rank == 0:
        base = {k.removeprefix("base."): v for k, v in full.items() if k.startswith("base.")}
        model.export(directory, tokenizer, state_dict=base)
        log.info("exported the student without the P4D branch to %s (%d tensors)", directory, len(base))


if __name__ == "__main__":
    main()
