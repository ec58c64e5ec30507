"""How ``distil teacher adapt`` trains: which parameters train when (the learning rate schedule
is ``distil.training``'s, as in every training loop).

Kept apart from the training loop so each choice (``train_layers``, ``head_warmup_tokens`` in
:class:`~distil.teacher.config.AdaptConfig`) can be checked on a model without training it, and
so ``scripts/experiments/adapt_curve.py`` compares exactly what the stage runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from distil.teacher.load import mlm_parts


@dataclass
class TrainablePlan:
    """The parameters the optimizer sees: ``head`` trains from step 0, ``body`` (encoder) from
    the end of the head-only warm-up. Everything else stays frozen."""

    head: list[tuple[str, torch.nn.Parameter]]
    body: list[tuple[str, torch.nn.Parameter]]

    def all(self) -> list[tuple[str, torch.nn.Parameter]]:
        return self.head + self.body


def plan_trainable(model: Any, train_layers: int, train_word_embeddings: bool) -> TrainablePlan:
    """Split a ``*ForMaskedLM`` model's parameters into head / trained encoder parts and freeze
    every parameter (``start_phase`` unfreezes). The word embeddings are tied to the head's
    output layer, so when trained they belong to the head."""
    encoder, head = mlm_parts(model)
    word = model.get_input_embeddings().weight
    layers = encoder.encoder.layer
    if train_layers > len(layers):
        raise ValueError(
            f"train_layers {train_layers}: the teacher has {len(layers)} encoder layers; "
            f"use 1..{len(layers)}, or -1 for the whole encoder"
        )
    if train_layers < 0:
        body = [(f"encoder.{n}", p) for n, p in encoder.named_parameters() if p is not word]
    else:
        first = len(layers) - train_layers
        body = [
            (f"encoder.layer.{i}.{n}", p)
            for i in range(first, len(layers))
            for n, p in layers[i].named_parameters()
        ]
    head_params = [(f"head.{n}", p) for n, p in head.named_parameters() if p is not word]
    if train_word_embeddings:
        head_params.append(("word_embeddings.weight", word))
    for p in model.parameters():
        p.requires_grad_(False)
    return TrainablePlan(head_params, body)


def start_phase(plan: TrainablePlan, with_body: bool) -> None:
    """Unfreeze the head, and the encoder part too when ``with_body`` (after the head warm-up).
    Frozen encoder parameters build no autograd graph, so head-only steps skip the backward
    through the encoder."""
    for _, p in plan.head:
        p.requires_grad_(True)
    for _, p in plan.body:
        p.requires_grad_(with_body)
