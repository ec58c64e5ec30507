"""Teacher families: what differs between BERT, RoBERTa and XLM-RoBERTa checkpoints, in one place.

The family comes from the checkpoint's ``config.json`` ``model_type``. Every stage reads it from
here: the special tokens prepare packs with (``[CLS] … [SEP]`` or ``<s> … </s>``), the attribute
names of the encoder and the masked-LM head (``.bert`` / ``.cls`` vs ``.roberta`` / ``.lm_head``),
and which checkpoints are refused. The rest (no token type ids, RoBERTa's position ids offset by
``padding_idx + 1``) the HF model classes derive from ``input_ids`` as long as padding uses the
tokenizer's own pad id, which ``special_ids["pad"]`` is. Engine-free: no torch import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROBERTA_SPECIALS = {"cls": "<s>", "sep": "</s>", "pad": "<pad>", "mask": "<mask>", "unk": "<unk>"}


@dataclass(frozen=True)
class Family:
    model_type: str  # config.json ``model_type``
    name: str
    special_tokens: dict[str, str]  # role (cls, sep, pad, mask, unk) -> token
    head: str  # attribute (and state-dict prefix) of the masked-LM head on ``…ForMaskedLM``
    tokenizer: str  # the tokenizer kind, for messages and docs


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family(
            "bert",
            "BERT",
            {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "mask": "[MASK]", "unk": "[UNK]"},
            "cls",
            "WordPiece",
        ),
        Family("roberta", "RoBERTa", ROBERTA_SPECIALS, "lm_head", "byte-level BPE"),
        Family("xlm-roberta", "XLM-RoBERTa", ROBERTA_SPECIALS, "lm_head", "SentencePiece Unigram"),
    )
}


class UnsupportedTeacherError(ValueError):
    """The checkpoint's ``model_type`` is not one of ``FAMILIES``."""


def supported() -> str:
    return ", ".join(f"{f.model_type!r} ({f.name})" for f in FAMILIES.values())


def family_of(config: dict[str, Any], url: str) -> Family:
    """The family of a checkpoint from its ``config.json`` (cheap: no weights loaded); an
    unsupported ``model_type`` is refused with the supported list."""
    mtype = config.get("model_type")
    family = FAMILIES.get(mtype)  # type: ignore[arg-type]
    if family is None:
        arch = ", ".join(config.get("architectures") or []) or "unknown architecture"
        raise UnsupportedTeacherError(
            f"{url} is a {mtype!r} checkpoint ({arch}); distil supports the teacher families "
            f"{supported()} (config.json model_type). Use a checkpoint of one of them as --teacher."
        )
    return family


def family_of_model(model: Any) -> Family:
    """The family of a loaded HF model (its ``config.model_type``)."""
    config = model.config
    return family_of(
        {"model_type": config.model_type, "architectures": config.architectures},
        type(model).__name__,
    )


def mlm_attrs(model: Any) -> tuple[str, str]:
    """Attribute names of (encoder, masked-LM head) on a ``…ForMaskedLM`` of a supported family:
    ``("bert", "cls")`` or ``("roberta", "lm_head")``."""
    head = family_of_model(model).head
    if not hasattr(model, head):
        raise UnsupportedTeacherError(
            f"{type(model).__name__} has no masked-LM head (.{head}); a …ForMaskedLM is expected"
        )
    return model.base_model_prefix, head


def encoder_of(model: Any) -> Any:
    """The encoder of a ``…ForMaskedLM`` (``.bert`` / ``.roberta``): input ids -> hidden states."""
    return getattr(model, mlm_attrs(model)[0])


def head_of(model: Any) -> Any:
    """The masked-LM head of a ``…ForMaskedLM`` (``.cls`` / ``.lm_head``): hidden -> vocab logits."""
    return getattr(model, mlm_attrs(model)[1])


def family_of_specials(present: set[str]) -> Family | None:
    """The first family whose special tokens are all in ``present`` (a tokenizer's tokens), for a
    tokenizer given without a ``config.json``; None when no family's are."""
    for family in FAMILIES.values():
        if set(family.special_tokens.values()) <= present:
            return family
    return None
