"""Held-out masked-LM metrics of a student against its teacher: what the distil recipe
evaluates every ``eval_every`` steps and ``distil eval`` reports (one computation for both)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from distil.progress import Progress


@torch.inference_mode()
def mlm_metrics(
    student: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
    teacher: torch.nn.Module | None = None,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Held-out MLM accuracy, top-1 agreement with the teacher and KL(teacher || student) at T=1.

    ``student``: a ``MaskedLMForDistillation`` (logits at masked positions only). Teacher targets
    come from the batch (a cache's ``target_ids``/``target_logprobs``; KL coarsened to {cached
    ids, rest}) or, when ``teacher`` (a ``…ForMaskedLM``) is given, from running it: full KL.
    A ``kd_positions: all`` cache's KL is over every position it has targets for (``kd_positions``
    of its batches); accuracy and agreement are over the masked positions either way.
    """
    from distil import losses
    from distil.student.model import mlm_rows
    from distil.teacher.load import mlm_parts
    from distil.train.data import to_device

    n = correct = agree = n_kl = 0
    kl_sum = 0.0
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        batch = to_device(batch, torch.device(device))
        labels = batch["labels"]
        sel = batch.get("kd_positions")
        logits, _ = student(batch["input_ids"], batch["attention_mask"], labels, sel)
        rows = mlm_rows(labels, sel)
        m = int(labels.ne(-100).sum())
        if progress is not None:
            progress.update(1, positions=m)
        if logits.shape[0] == 0:
            continue
        pred = logits.argmax(-1)
        if teacher is not None:
            t_encoder, t_head = mlm_parts(teacher)
            hidden = t_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            t_logits = t_head(hidden[0][labels != -100])
            t_top1 = t_logits.argmax(-1)
            kl = losses.kd_dense(logits, t_logits, 1.0)
        else:
            target_lp = batch["target_logprobs"]
            if "target_counts" in batch:  # unused draw slots are no support
                target_lp = target_lp.masked_fill(batch["target_counts"] == 0, -torch.inf)
            best = target_lp.argmax(-1, keepdim=True)
            t_top1 = batch["target_ids"].gather(-1, best).squeeze(-1)
            kl = losses.kl_coarse(logits, batch["target_ids"], target_lp)
        if rows is not None:  # targets at every token: accuracy on the masked ones
            pred, t_top1 = pred[rows], t_top1[rows]
        n += m
        correct += int((pred == labels[labels != -100]).sum())
        agree += int((pred == t_top1).sum())
        kl_sum += float(kl) * logits.shape[0]
        n_kl += logits.shape[0]
    if n == 0:
        return {"positions": 0}
    return {
        "positions": n,
        "mlm_accuracy": correct / n,
        "top1_agreement": agree / n,
        "kl": kl_sum / max(n_kl, 1),
    }
