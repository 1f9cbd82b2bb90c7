"""SiT (Self-slimmed Vision Transformer): the pieces the ``sit`` recipe adds to the one training
loop (`exporter.training.recipes`, `exporter.training.loop.train`).

A SiT student is the teacher with its token reduction replaced by Token Slimming Modules
(`token_reducer="tsm"`, `student_from_teacher`). Loss per trained subnet (the loop): cross-entropy
and KL to the teacher's logits, plus `token_reconstruction`, the MSE between the student's final
tokens and the teacher's final tokens aggregated by the student's own (detached) slimming
weights. SiT restores the full token count with a Feature Recovery Module instead; aggregating
the teacher's tokens is the same supervision with no extra trained module, and it needs the
student and teacher to share the embed dim and resolution (otherwise the term is left out).

`slimvit train --recipe sit --teacher CKPT` -> a slimvit checkpoint whose keep-rate variants
export with no top-k or gather.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from exporter.errors import ConfigError
from exporter.nn.model import Features, SlimmableViT


def student_from_teacher(teacher: SlimmableViT, token_reducer: str = "tsm") -> SlimmableViT:
    """A student with the teacher's weights (SiT starts from the pretrained model); its Token
    Slimming Modules are freshly initialised. The teacher is not changed. ``token_reducer``
    ``topk`` gives the top-k baseline trained the same way."""
    cfg = dataclasses.replace(teacher.cfg, fuse_tokens=False, token_reducer=token_reducer)
    torch.manual_seed(0)
    student = SlimmableViT(cfg)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or any(".tsm." not in k for k in missing):
        raise ConfigError(f"teacher does not fit the student: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return student


def token_reconstruction(student: Features, teacher: Features | None, n_prefix: int) -> Tensor | None:
    """MSE between the student's final tokens and the teacher's, the teacher's patch tokens
    mixed by the student's (detached) slimming weights; None where the shapes cannot match
    (no teacher, another width or resolution, or top-k pruned tokens)."""
    if teacher is None or student.tokens.shape[-1] != teacher.tokens.shape[-1]:
        return None
    target = teacher.tokens
    if student.assign is not None:
        if student.assign.shape[-1] != teacher.tokens.shape[1] - n_prefix:  # another resolution
            return None
        patches = student.assign.detach() @ teacher.tokens[:, n_prefix:]  # (B, k, D)
        target = torch.cat([teacher.tokens[:, :n_prefix], patches], dim=1)
    if student.tokens.shape != target.shape:
        return None
    return F.mse_loss(student.tokens.float(), target.float())
