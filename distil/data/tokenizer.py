"""The stage-1 tokenizer: ``tokenizer.json`` of a model reference, read once, cached per process.

``TokenizerInfo`` is what a Ray task is sent (the JSON text, not a live tokenizer); each worker
builds the ``tokenizers.Tokenizer`` once (``get_tokenizer``) and reuses it across shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distil import storage
from distil.packaged import resolve_model_ref

SPECIAL_TOKENS = {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "mask": "[MASK]", "unk": "[UNK]"}


@dataclass(frozen=True)
class TokenizerInfo:
    path: str  # the reference as given (packaged:… / path / URL)
    json_text: str
    fingerprint: str  # sha256 of tokenizer.json
    vocab_size: int
    special_ids: dict[str, int]


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
    tok = _tokenizer_from_json(data.decode())
    special: dict[str, int] = {}
    for key, token in SPECIAL_TOKENS.items():
        tid = tok.token_to_id(token)
        if tid is None:
            raise ValueError(f"tokenizer {ref} has no {token} token (not a BERT WordPiece vocab?)")
        special[key] = tid
    return TokenizerInfo(
        path=ref,
        json_text=data.decode(),
        fingerprint=storage.sha256_bytes(data),
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        special_ids=special,
    )


_TOKENIZERS: dict[str, Any] = {}


def _tokenizer_from_json(text: str):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(text)
    # The packaged tokenizer.json truncates at 128 (a sentence-transformers setting): without
    # this every document would silently lose all but its first 128 tokens.
    tok.no_truncation()
    tok.no_padding()  # it pads to 128 too
    # Text that happens to spell "[SEP]" or "[MASK]" is text: without this the tokenizer turns
    # it into the real special ids, which would corrupt packing and masking downstream.
    tok.encode_special_tokens = True
    return tok


def get_tokenizer(info: TokenizerInfo):
    """One tokenizer object per process (a Ray worker reuses it across shards)."""
    tok = _TOKENIZERS.get(info.fingerprint)
    if tok is None:
        tok = _TOKENIZERS[info.fingerprint] = _tokenizer_from_json(info.json_text)
    return tok
