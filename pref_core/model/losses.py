"""Training losses of the three-way preference head: tensors in, a scalar tensor out.

No model, Trainer or config objects here (torchtune's ``rlhf/loss`` style): the model's forward calls
`preference_loss`, and pref_core.train.trainer.PreferenceTrainer.compute_loss calls `distillation_loss` with the
distill section's numbers.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from pref_core.data.labels import NUM_CLASSES


def preference_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the three classes.

    logits: (batch, 3). labels: (batch,) integer class ids, or (batch, 3) target probabilities
    (soft labels, e.g. from distillation or label smoothing).
    """
    if labels.dim() == 1:
        return F.cross_entropy(logits.float(), labels.long())
    if labels.dim() == 2 and labels.shape[1] == NUM_CLASSES:
        return F.cross_entropy(logits.float(), labels.float())
    raise ValueError(
        f"labels must be (batch,) class ids or (batch, {NUM_CLASSES}) probabilities, got shape {tuple(labels.shape)}"
    )


def distillation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_probs: torch.Tensor,
    has_teacher: Optional[torch.Tensor] = None,
    *,
    hard_weight: float = 1.0,
    kl_weight: float = 1.0,
    temperature: float = 1.0,
    hard_mask: Optional[torch.Tensor] = None,
    row_weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Mean over rows of ``row_weight * (hard_weight * CE(label) * hard_mask + kl_weight * T^2 * KL(teacher_T ||
    student_T) * has_teacher)``.

    teacher_T = softmax(log(teacher_probs) / T), student_T = softmax(logits / T) (Hinton et al.; the T^2 keeps
    the soft term's gradient scale independent of T). Rows whose `has_teacher` is False (e.g. extra data
    without a teacher row) get the hard term only; their `teacher_probs` are placeholders and never read.
    Rows whose `hard_mask` is False (pseudo-labelled rows: no true label) get the soft term only; their
    `labels` are placeholders. `row_weight` scales each row's loss (data.pseudo_weight on pseudo-labelled rows).
    The mean runs over all rows, so a row weighs the same whatever else the batch holds.

    logits: (batch, 3). labels: (batch,) class ids. teacher_probs: (batch, 3) probabilities (no gradient).
    has_teacher, hard_mask: (batch,) bool, default all True. row_weight: (batch,) float, default all 1.
    Returns a scalar float32 tensor.
    """
    if teacher_probs.shape != logits.shape:
        raise ValueError(
            f"teacher_probs must be (batch, {NUM_CLASSES}) like the logits {tuple(logits.shape)}, "
            f"got {tuple(teacher_probs.shape)}"
        )
    logits = logits.float()
    hard = F.cross_entropy(logits, labels.to(logits.device).long(), reduction="none")  # (batch,)
    if has_teacher is None:
        has_teacher = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
    has_teacher = has_teacher.to(device=logits.device, dtype=torch.bool)  # (batch,)
    teacher = teacher_probs.detach().to(device=logits.device, dtype=torch.float32)  # (batch, 3)
    # A placeholder row could be anything (all zeros -> NaN after the log); a uniform row keeps the masked
    # arithmetic finite, since NaN * 0 would still be NaN.
    teacher = torch.where(has_teacher[:, None], teacher, torch.full_like(teacher, 1.0 / NUM_CLASSES))
    # log(0) = -inf stays -inf after / T, so a class the teacher rules out keeps probability 0.
    teacher_t = torch.softmax(torch.log(teacher) / temperature, dim=-1)  # (batch, 3)
    student_log_t = torch.log_softmax(logits / temperature, dim=-1)  # (batch, 3)
    # xlogy: 0 * log 0 = 0 for the classes the teacher rules out.
    kl = (torch.xlogy(teacher_t, teacher_t) - teacher_t * student_log_t).sum(dim=-1)  # (batch,)
    kl = torch.where(has_teacher, kl, torch.zeros_like(kl))
    if hard_mask is not None:
        hard = torch.where(hard_mask.to(device=logits.device, dtype=torch.bool), hard, torch.zeros_like(hard))
    per_row = hard_weight * hard + kl_weight * temperature**2 * kl  # (batch,)
    if row_weight is not None:
        per_row = per_row * row_weight.to(device=logits.device, dtype=torch.float32)
    return per_row.mean()
