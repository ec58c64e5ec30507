"""The stage-1 tokenizer: ``tokenizer.json`` of a model reference, read once, cached per process.

``TokenizerInfo`` is what a Ray task is sent (the JSON text, not a live tokenizer); each worker
builds the ``tokenizers.Tokenizer`` once (``get_tokenizer``) and reuses it across shards.

The tokenizer's family (``distil.family``: BERT WordPiece, RoBERTa byte-level BPE, XLM-R
SentencePiece Unigram) comes from the ``config.json`` next to it, or, for a bare tokenizer, from
its special tokens; it decides the roles packing and masking use (``[CLS] … [SEP]`` or
``<s> … </s>``, the pad and mask ids). ``tokenizer_identity`` names what decides the token ids, so
a later stage can tell whether a teacher reads the prepared ids the way they were written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from distil import storage
from distil.family import FAMILIES, Family, family_of, family_of_specials
from distil.packaged import resolve_model_ref


@dataclass(frozen=True)
class TokenizerInfo:
    path: str  # the reference as given (packaged:… / path / URL)
    json_text: str
    fingerprint: str  # sha256 of tokenizer.json (its bytes: part of shard and data keys)
    identity: str  # tokenizer_identity(json_text): equal for every copy/re-save of the tokenizer
    vocab_size: int
    special_ids: dict[str, int]
    family: str = "bert"  # ``distil.family`` model_type


def load_tokenizer_info(ref: str) -> TokenizerInfo:
    """Read ``tokenizer.json`` from a model directory reference (packaged:…, path or URL)."""
    location = resolve_model_ref(ref)
    url = location if location.endswith(".json") else storage.join(location, "tokenizer.json")
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"no fast tokenizer at {storage.redact(url)} (stage 1 needs a tokenizer.json)"
        ) from e
    text = data.decode()
    tok = _tokenizer_from_json(text)
    family = _family(location, ref, set(_special_tokens(text)) | set(tok.get_vocab()))
    special = {key: tok.token_to_id(token) for key, token in family.special_tokens.items()}
    missing = [family.special_tokens[k] for k, tid in special.items() if tid is None]
    if missing:
        raise UnsupportedTokenizerError(ref, missing, _special_tokens(text), family)
    return TokenizerInfo(
        path=ref,
        json_text=text,
        fingerprint=storage.sha256_bytes(data),
        identity=tokenizer_identity(text),
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        special_ids=special,
        family=family.model_type,
    )


def _family(location: str, ref: str, tokens: set[str]) -> Family:
    """The family from the model dir's ``config.json`` (refused when unsupported), else the
    one whose special tokens the tokenizer has (BERT when none: its error names what lacks)."""
    if not location.endswith(".json"):
        try:
            config = storage.read_json(storage.join(location, "config.json"))
        except FileNotFoundError:
            config = None
        if config is not None:
            return family_of(config, ref)
    return family_of_specials(tokens) or FAMILIES["bert"]


class UnsupportedTokenizerError(ValueError):
    """The tokenizer lacks its family's special tokens."""

    def __init__(self, ref: str, missing: list[str], found: list[str], family: Family):
        kinds = "; ".join(
            f"{f.name}: {f.tokenizer} with {' '.join(f.special_tokens.values())}"
            for f in FAMILIES.values()
        )
        super().__init__(
            f"tokenizer {ref} lacks {family.name}'s special tokens {' '.join(missing)} (its "
            f"special tokens: {' '.join(found) or 'none'}). distil supports these tokenizers: "
            f"{kinds}. Use the teacher checkpoint's folder as --tokenizer."
        )


def _special_tokens(json_text: str) -> list[str]:
    return [t["content"] for t in json.loads(json_text).get("added_tokens", []) if t["special"]]


def tokenizer_identity(json_text: str) -> str:
    """SHA-256 of what maps text to ids: the model (vocab, unk token, subword prefix), the
    normalizer, the pre-tokenizer and the added/special tokens of a ``tokenizer.json``.

    Parsed and re-serialised by ``tokenizers`` first, so formatting, key order, defaults filled in
    by another version, and truncation/padding/post-processor/decoder settings (which never change
    the ids stage 1 writes) do not count: two copies of one tokenizer, or a ``save_pretrained``
    round trip, hash equal; one swapped token or a different lowercasing does not.
    """
    from tokenizers import Tokenizer

    d = json.loads(Tokenizer.from_str(json_text).to_str())
    parts = {k: d.get(k) for k in ("model", "normalizer", "pre_tokenizer")}
    parts["added_tokens"] = sorted(d.get("added_tokens") or [], key=lambda t: t["id"])
    return storage.sha256_bytes(json.dumps(parts, sort_keys=True).encode())


_TOKENIZERS: dict[str, Any] = {}


def _tokenizer_from_json(text: str):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(text)
    # The packaged tokenizer.json truncates at 128 (a sentence-transformers setting): without
    # this every document would silently lose all but its first 128 tokens.
    tok.no_truncation()
    tok.no_padding()  # it pads to 128 too
    # Text that happens to spell "[SEP]" or "<mask>" is text: without this the tokenizer turns
    # it into the real special ids, which would corrupt packing and masking downstream.
    tok.encode_special_tokens = True
    return tok


def get_tokenizer(info: TokenizerInfo):
    """One tokenizer object per process (a Ray worker reuses it across shards)."""
    tok = _TOKENIZERS.get(info.fingerprint)
    if tok is None:
        tok = _TOKENIZERS[info.fingerprint] = _tokenizer_from_json(info.json_text)
    return tok
