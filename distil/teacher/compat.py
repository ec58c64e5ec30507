"""Can this teacher read these prepared ids? Checked before any work by the stage-2 jobs.

Vocabulary size and sequence length are necessary but not enough: two tokenizers with the same
vocab size (one with two tokens swapped, or lowercasing off) give ids that mean other tokens to
the teacher, and the cache would be nonsense that no later stage can detect. So the prepared
manifest records ``tokenizer.identity`` (``distil.data.tokenizer.tokenizer_identity``) and the
teacher's tokenizer must have the same one.
"""

from __future__ import annotations

import logging
from typing import Any

from distil import storage
from distil.data.tokenizer import load_tokenizer_info
from distil.teacher.load import LoadedTeacher

log = logging.getLogger(__name__)


class TokenizerMismatchError(ValueError):
    """The teacher's tokenizer is not the one the prepared ids were written with."""


def check_compatible(model_config: Any, prepared: dict[str, Any]) -> None:
    """Refuse a teacher that cannot read the prepared ids (wrong vocab or too short)."""
    if prepared["vocab_size"] > model_config.vocab_size:
        raise ValueError(
            f"the prepared data has vocab_size {prepared['vocab_size']} but the teacher only "
            f"{model_config.vocab_size}: it was tokenized with a different tokenizer"
        )
    max_pos = getattr(model_config, "max_position_embeddings", None)
    if max_pos is not None and prepared["seq_len"] > max_pos:
        raise ValueError(
            f"seq_len {prepared['seq_len']} exceeds the teacher's max_position_embeddings {max_pos}"
        )


def prepared_tokenizer_identity(prepared: dict[str, Any]) -> tuple[str | None, str]:
    """(identity, how it is known) of the tokenizer that wrote ``prepared``; identity None when
    it cannot be known.

    A manifest written before identities existed has only the tokenizer's path and the SHA-256
    of its ``tokenizer.json`` bytes: if that file is still there, byte-identical, its identity is
    the one the data was written with.
    """
    recorded = prepared.get("tokenizer") or {}
    path = recorded.get("path", "?")
    if recorded.get("identity"):
        return recorded["identity"], f"tokenizer {path}, as recorded in its manifest"
    try:
        info = load_tokenizer_info(path)
    except Exception as e:  # missing, unreachable, no credentials…: unverifiable, not fatal
        return None, f"its tokenizer {path} cannot be read now ({type(e).__name__}: {e})"
    if info.fingerprint != recorded.get("fingerprint"):
        return None, f"its tokenizer {path} has changed since (tokenizer.json bytes differ)"
    return info.identity, f"tokenizer {path}, recomputed (unchanged since prepare)"


def check_tokenizer(
    teacher: LoadedTeacher, teacher_ref: str, prepared: dict[str, Any], input_url: str
) -> None:
    """Refuse a teacher whose tokenizer is not the prepared data's.

    A manifest from before identities whose tokenizer can no longer be re-read unchanged is
    accepted with a warning, not refused: it cannot be checked either way, and refusing would
    strand every dataset (and reused demo step) prepared earlier. The warning names the fix.
    """
    want, how = prepared_tokenizer_identity(prepared)
    where = storage.redact(input_url)
    if want is None:
        log.warning(
            "cannot check the teacher's tokenizer: prepared %s predates tokenizer identities (no "
            "tokenizer.identity in its manifest) and %s. If teacher %s has another tokenizer "
            "the cache will be nonsense. Re-run the same `distil prepare` command to record it "
            "(every shard is reused, only manifest.json is rewritten; fingerprint unchanged).",
            where,
            how,
            teacher_ref,
        )
        return
    have = teacher.tokenizer_identity
    if have != want:
        recorded = (prepared.get("tokenizer") or {}).get("path", "?")
        raise TokenizerMismatchError(
            f"teacher {teacher_ref} has another tokenizer than the prepared data: prepared "
            f"{where} was tokenized with tokenizer identity {want[:16]} ({how}); the teacher's "
            f"tokenizer (in {teacher.local_dir}) has identity {have[:16]}. Its ids would mean other "
            f"tokens to this teacher. Fix: re-prepare with the teacher's tokenizer, "
            f"`distil prepare --tokenizer {teacher_ref} --input <corpus> --output <new dir>`, "
            f"or use a teacher whose tokenizer is {recorded}."
        )


def check_teacher(
    teacher: LoadedTeacher, teacher_ref: str, prepared: dict[str, Any], input_url: str
) -> None:
    """Every check of a loaded teacher against a prepared manifest (the model type is checked by
    ``load_teacher`` itself)."""
    check_compatible(teacher.model.config, prepared)
    check_tokenizer(teacher, teacher_ref, prepared, input_url)
