"""The student: a stock Hugging Face VLM + TPE (no parameters) + the P4D branch (training only).

Every step runs the same modules in the same order whatever the batch holds (ZeRO-3 ranks must,
docs/stack.md): images through the vision tower, then videos with TPE (an all-zero dummy stands in for
a missing modality, its output added to the loss as 0 x sum), the LLM, then the P4D branch (on a dummy grid
when the batch has no video). Auxiliary terms are masked per sample, so an image-only sample (SAT)
or a sample whose field was not cached contributes exactly 0 to L_LD / L_ED.

`export` writes the base model alone with save_pretrained: the result is a plain transformers
checkpoint of the base architecture; TPE, having no parameters, is re-applied at inference from
`p4d_student.json` beside it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoTokenizer
from transformers.utils import ModelOutput

from configs.dataclass_io import from_dict, to_dict
from shards.teacher_fields import MAP_SIZE
from student.adapters import VLMAdapter, build_adapter
from student.batch import StudentBatch
from student.config import BranchConfig, ModelConfig, StudentConfig, TPEConfig
from student.losses import latent_loss_per_sample, map_loss_per_sample, masked_mean
from student.p4d import P4DBranch, window_frames
from student.prompt import IGNORE

STUDENT_META = "p4d_student.json"  # adapter, video size and TPE of an exported student


@dataclass
class StudentOutput(ModelOutput):
    """A ModelOutput (a dict) so that ZeRO-3's hooks find the tensors in it."""

    loss: torch.Tensor | None = None
    terms: dict[str, torch.Tensor] | None = None  # ce, ld, ed_<task>: unweighted batch values (detached)
    per_sample: dict[str, torch.Tensor] | None = None  # term -> [B], 0 where masked
    valid: dict[str, torch.Tensor] | None = None  # term -> bool [B]
    logits: torch.Tensor | None = None


class StudentModel(nn.Module):
    def __init__(self, config: StudentConfig, base: nn.Module, adapter: VLMAdapter, map_size: int = MAP_SIZE):
        super().__init__()
        self.config = config
        self.base = base
        self.adapter = adapter
        # The branch in the base's dtype: ZeRO-3 under bf16 keeps one dtype for every trainable weight.
        self.branch = P4DBranch(adapter.hidden_size, config.branch, map_size).to(base.dtype) \
            if config.branch.enabled else None
        frozen = [*(adapter.vision_parameters(base) if config.model.freeze_vision else ()),
                  *(adapter.projector_parameters(base) if config.model.freeze_projector else ())]
        for p in frozen:
            p.requires_grad_(False)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: StudentConfig, map_size: int = MAP_SIZE) -> StudentModel:
        """Load the base VLM from config.model.path and attach a fresh P4D branch. Under ZeRO-3 the
        caller has made transformers' HfDeepSpeedConfig live first (student/train.py)."""
        path = config.model.path
        if not path or not Path(path).is_dir():
            raise FileNotFoundError(f"model.path {path!r} is not a Hugging Face model directory")
        hf_config = AutoConfig.from_pretrained(path)
        adapter = build_adapter(config.model.adapter, hf_config, path, config.model.video_size)
        base = adapter.model_class.from_pretrained(path, dtype=getattr(torch, config.model.dtype))
        if config.model.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return cls(config, base, adapter, map_size)

    @classmethod
    def from_export(cls, directory: str | Path, dtype: str = "float32") -> StudentModel:
        """An exported student (no branch) ready for generation."""
        directory = Path(directory)
        meta_path = directory / STUDENT_META
        if not meta_path.exists():
            raise FileNotFoundError(f"{directory} is not an exported p4d student (no {STUDENT_META})")
        meta = json.loads(meta_path.read_text())
        # An export written before TPE had a placement was trained with it after the projector.
        tpe = {"placement": "after_projector", **meta["tpe"]}
        config = StudentConfig(
            model=ModelConfig(adapter=meta["adapter"], path=str(directory), dtype=dtype,
                              video_size=tuple(meta["video_size"]), gradient_checkpointing=False),
            tpe=from_dict(TPEConfig, tpe, f"{meta_path}:tpe"),
            branch=BranchConfig(enabled=False),
        )
        return cls.from_config(config)

    # -- forward --------------------------------------------------------------------------------
    def _visual_inputs(self, batch: StudentBatch, uniform: bool):
        """-> (mm_encoder_outputs, model kwargs, zero-valued term touching any dummy encoding)."""
        adapter, model = self.adapter, self.base
        zero = torch.zeros((), dtype=torch.float32)
        encoded = {}
        for kind, inputs, dummy in (("image", batch.images, adapter.dummy_image),
                                    ("video", batch.videos, adapter.dummy_video)):
            if inputs:
                encoded[kind] = adapter.encode(model, inputs, kind, self.config.tpe)
            elif uniform:
                dummies = adapter.encode(model, [dummy()], kind, self.config.tpe)
                zero = zero + 0.0 * sum(f.float().sum() for f in dummies)
        mm = adapter.mm_encoder_outputs(encoded.get("image", []), encoded.get("video", []))
        kwargs = adapter.forward_kwargs(batch.input_ids, batch.images, batch.videos)
        return mm, kwargs, zero

    def forward(self, batch: StudentBatch, denominators: dict[str, torch.Tensor] | None = None) -> StudentOutput:
        """`denominators` (term -> count) replaces each masked mean's local count: the trainer passes
        the valid-sample count summed over ranks / world size, so the rank-averaged gradient is the
        exact mean over every valid sample of the global batch."""
        mm, kwargs, zero = self._visual_inputs(batch, uniform=True)
        out = self.base(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, mm_encoder_outputs=mm or None,
            output_hidden_states=self.branch is not None, use_cache=False, **kwargs,
        )
        logits = out.logits
        ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch.labels[:, 1:].flatten(),
                             ignore_index=IGNORE)
        terms = {"ce": ce.detach()}
        total = self.config.loss.ce_weight * ce + zero.to(ce.device)
        result = StudentOutput(loss=total, terms=terms, per_sample={}, valid={}, logits=logits)
        if self.branch is not None:
            total = total + self._distillation(batch, out.hidden_states[self.config.branch.layer], result,
                                               denominators or {})
        result.loss = total
        return result

    def _visual_grid(self, batch: StudentBatch, hidden: torch.Tensor) -> torch.Tensor:
        """LLM hidden states at each video's grid tokens -> [Bv, slots, rows, cols, D]."""
        grids = []
        for row, inp in zip(batch.video_rows.tolist(), batch.videos):
            positions = (batch.input_ids[row] == self.adapter.video_token_id).nonzero().flatten()
            g = inp.grid
            grids.append(hidden[row, positions[: g.grid_tokens]].reshape(g.slots, g.rows, g.cols, -1))
        return torch.stack(grids)

    def _branch(self, batch: StudentBatch, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        if batch.videos:
            grid = self._visual_grid(batch, hidden)
            frames, num_frames, fps = batch.window_frames, batch.num_frames, batch.videos[0].grid.frames_per_slot
        else:  # no video on this rank: the branch still runs (ZeRO-3), on zeros, and counts 0
            dummy = self.adapter.dummy_video()
            g = dummy.grid
            grid = hidden.new_zeros(1, g.slots, g.rows, g.cols, hidden.shape[-1])
            frames, num_frames, fps = window_frames(2), 2, g.frames_per_slot
        return self.branch(grid, frames, num_frames, fps)

    @torch.no_grad()
    def predict_maps(self, batch: StudentBatch) -> dict[str, torch.Tensor]:
        """The branch's predictions for the batch's videos (latents, log depth, flow, motion logits,
        rays): what a depth probe or a visualization reads."""
        if self.branch is None or not batch.videos:
            raise ValueError("predict_maps needs the P4D branch and a batch with videos")
        mm, kwargs, _ = self._visual_inputs(batch, uniform=False)
        out = self.base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, mm_encoder_outputs=mm,
                        output_hidden_states=True, use_cache=False, **kwargs)
        return self._branch(batch, out.hidden_states[self.config.branch.layer])

    @torch.no_grad()
    def visual_hidden(self, batch: StudentBatch, layer: int = -1) -> torch.Tensor:
        """The LLM's hidden states of `layer` at each video's visual tokens, [Bv, slots, rows, cols, D]:
        what a probe of the frozen student reads (student/probes.py)."""
        mm, kwargs, _ = self._visual_inputs(batch, uniform=False)
        out = self.base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, mm_encoder_outputs=mm,
                        output_hidden_states=True, use_cache=False, **kwargs)
        return self._visual_grid(batch, out.hidden_states[layer])

    def _distillation(self, batch, hidden, result: StudentOutput, denominators) -> torch.Tensor:
        cfg, loss_cfg = self.config, self.config.loss
        preds = self._branch(batch, hidden)
        total = 0.0 * sum(p.float().sum() for p in preds.values())

        for name, fld in cfg.distilled_terms():
            if fld == "latents":
                weight = loss_cfg.ld_weight
                loss_fn = lambda p, t: latent_loss_per_sample(p, t, loss_cfg.ld_kind)  # noqa: E731
            else:
                weight = loss_cfg.ed_weight * loss_cfg.task_weights[fld]
                loss_fn = lambda p, t, task=fld: map_loss_per_sample(  # noqa: E731
                    task, p, t, loss_cfg.ed_kind, loss_cfg.ed_forms[task])
            per_sample = torch.zeros(batch.size, dtype=torch.float32, device=hidden.device)
            valid = torch.zeros(batch.size, dtype=torch.bool, device=hidden.device)
            if batch.videos and fld in batch.targets:
                rows, ok = batch.video_rows, batch.target_valid[fld]
                values = loss_fn(preds[fld], batch.targets[fld].to(hidden.device)).float()
                per_sample = per_sample.index_put((rows,), torch.where(ok, values, 0.0))
                valid = valid.index_put((rows,), ok)
            value = masked_mean(per_sample, valid, denominators.get(name))
            total = total + weight * value
            result.terms[name] = value.detach()
            result.per_sample[name] = per_sample.detach()
            result.valid[name] = valid
        return total

    # -- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: StudentBatch, max_new_tokens: int = 32, **kwargs) -> torch.Tensor:
        """Greedy continuation of left-padded prompts (collate(..., generation=True)) -> new token ids."""
        mm, extra, _ = self._visual_inputs(batch, uniform=False)
        out = self.base.generate(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, mm_encoder_outputs=mm or None,
            max_new_tokens=max_new_tokens, do_sample=False, **extra, **kwargs,
        )
        return out[:, batch.input_ids.shape[1]:]

    @torch.no_grad()
    def next_token_logits(self, batch: StudentBatch) -> torch.Tensor:
        """[B, vocab] logits of the token after each left-padded prompt: likelihood scoring of options."""
        mm, kwargs, _ = self._visual_inputs(batch, uniform=False)
        out = self.base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, mm_encoder_outputs=mm or None,
                        use_cache=False, **kwargs)
        return out.logits[:, -1]

    # -- export ---------------------------------------------------------------------------------
    def export_meta(self) -> dict:
        return {"adapter": self.adapter.name, "video_size": list(self.adapter.video_size),
                "tpe": to_dict(self.config.tpe)}

    def export(self, directory: str | Path, tokenizer, state_dict: dict | None = None) -> Path:
        """Write the base VLM without the P4D branch (plain from_pretrained checkpoint) + TPE meta.
        `state_dict`: the consolidated base weights when they live partitioned (ZeRO-3)."""
        directory = Path(directory)
        self.base.save_pretrained(directory, state_dict=state_dict)
        tokenizer.save_pretrained(directory)
        (directory / STUDENT_META).write_text(json.dumps(self.export_meta(), indent=2) + "\n")
        return directory


def load_tokenizer(path: str | Path):
    return AutoTokenizer.from_pretrained(str(path))


def ablation(config: StudentConfig, name: str) -> StudentConfig:
    """The paper's five rows from one config: baseline, tpe, ld, ed, ld_ed (each adds to TPE)."""
    rows = {
        "baseline": (False, 0.0, 0.0), "tpe": (True, 0.0, 0.0), "ld": (True, None, 0.0),
        "ed": (True, 0.0, None), "ld_ed": (True, None, None),
    }
    if name not in rows:
        raise ValueError(f"ablation row must be one of {sorted(rows)}, got {name!r}")
    tpe_on, ld, ed = rows[name]
    loss = replace(config.loss, ld_weight=config.loss.ld_weight if ld is None else ld,
                   ed_weight=config.loss.ed_weight if ed is None else ed)
    branch = replace(config.branch, enabled=loss.ld_weight > 0 or loss.ed_weight > 0)
    return replace(config, tpe=replace(config.tpe, enabled=tpe_on), loss=loss, branch=branch)
