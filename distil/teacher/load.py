"""Load a teacher checkpoint: an HF checkpoint directory of a supported family (``distil.family``:
config ``model_type`` "bert", "roberta" or "xlm-roberta"; ``…ForMaskedLM`` or bare-encoder
layouts), from a path, an fsspec URL or a ``packaged:`` reference. Other families (DistilBERT,
DeBERTa, GPT-2, …) are refused here, before their weights load.

Remote checkpoints are copied once into ``$DISTIL_HOME/cache/models/<hash of URL + listing>``.
Only safetensors weights load by default: a pickle ``.bin`` can run arbitrary code when
unpickled, so it needs an explicit ``allow_pickle``. The SHA-256 of the weights is returned,
because it (not the URL) is what identifies a teacher in cache keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distil import storage
from distil.config import distil_home
from distil.family import encoder_of, family_of, family_of_model, head_of
from distil.packaged import resolve_model_ref

log = logging.getLogger(__name__)


class MissingMLMHeadError(ValueError):
    """The checkpoint has an encoder but no trained masked-LM head."""


@dataclass
class LoadedTeacher:
    model: Any  # the family's …ForMaskedLM in eval mode
    tokenizer: Any
    local_dir: str
    weights_sha256: str
    missing_keys: list[str] = field(default_factory=list)

    @property
    def has_mlm_head(self) -> bool:
        """False when the head's weights were not in the checkpoint (randomly initialised)."""
        prefix = head_prefix(self.model)
        return not any(k.startswith(prefix) for k in self.missing_keys)

    @property
    def tokenizer_identity(self) -> str:
        """``tokenizer_identity`` of the checkpoint's ``tokenizer.json`` — what ``distil prepare
        --tokenizer <this dir>`` records — or, for a dir with only ``vocab.txt``, of the fast
        tokenizer transformers builds from it."""
        from distil.data.tokenizer import tokenizer_identity

        path = Path(self.local_dir, "tokenizer.json")
        if path.exists():
            return tokenizer_identity(path.read_text())
        return tokenizer_identity(self.tokenizer.backend_tokenizer.to_str())


def _local_copy(url: str) -> str:
    """A local directory with the checkpoint at ``url`` (copied once, atomically)."""
    if storage.protocol_of(url) == "file":
        path = storage.get_fs(url)[1]
        if not os.path.isdir(path):
            raise FileNotFoundError(f"teacher checkpoint {url} is not a directory")
        return path
    fs, path = storage.get_fs(url)
    listing = sorted(
        (posixpath.relpath(p, path), info.get("size"), str(info.get("ETag", "")))
        for p, info in fs.find(path, detail=True).items()
    )
    if not listing:
        raise FileNotFoundError(f"teacher checkpoint {storage.redact(url)} is empty or missing")
    dest = distil_home() / "cache" / "models" / storage.fingerprint([url, listing])
    if (dest / ".complete").exists():
        return str(dest)
    tmp = dest.with_name(f"{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    log.info("copying teacher %s -> %s", storage.redact(url), dest)
    storage.copy_dir_to_local(url, str(tmp))
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return str(dest)


def weights_sha256(local_dir: str) -> str:
    """SHA-256 over the weight files (names and contents) and config.json of a checkpoint."""
    h = hashlib.sha256()
    names = sorted(
        n
        for n in os.listdir(local_dir)
        if n.endswith((".safetensors", ".bin")) or n == "config.json"
    )
    for name in names:
        h.update(name.encode() + b"\0")
        h.update(storage.sha256_url(os.path.join(local_dir, name)).encode())
    return h.hexdigest()


def head_prefix(model: Any) -> str:
    """State-dict prefix of the model's masked-LM head (``cls.`` for BERT, ``lm_head.``)."""
    return family_of_model(model).head + "."


def require_supported_checkpoint(url: str) -> None:
    """``family_of`` from the checkpoint's ``config.json`` alone (one small read, no weights):
    for stages that load the teacher later, on workers, and should refuse it before they start."""
    ref = resolve_model_ref(url)
    try:
        config = storage.read_json(storage.join(ref, "config.json"))
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"no config.json in {storage.redact(url)}: not a Hugging Face checkpoint dir"
        ) from e
    family_of(config, url)


def load_teacher(
    url: str, allow_pickle: bool = False, *, require_mlm_head: bool = False
) -> LoadedTeacher:
    """Load a masked-LM teacher from ``url`` (path, fsspec URL or ``packaged:NAME``).

    ``require_mlm_head``: raise ``MissingMLMHeadError`` when the head was not in the checkpoint
    (its logits would be noise); otherwise ``has_mlm_head`` reports it.
    """
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    local_dir = _local_copy(resolve_model_ref(url))
    files = os.listdir(local_dir)
    has_safetensors = any(f.endswith(".safetensors") for f in files)
    has_pickle = any(f.endswith(".bin") for f in files)
    if not has_safetensors:
        if not has_pickle:
            raise FileNotFoundError(f"no model weights (*.safetensors) in {url}")
        if not allow_pickle:
            raise ValueError(
                f"{url} has only pickle weights (.bin); pickle can execute code when loaded. "
                "Convert to safetensors, or pass --allow-pickle if you trust the source."
            )
    config_path = Path(local_dir, "config.json")
    if not config_path.exists():
        raise FileNotFoundError(f"no config.json in {url}: not a Hugging Face checkpoint dir")
    family_of(json.loads(config_path.read_text()), url)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # we report missing keys ourselves, precisely
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(
            local_dir, output_loading_info=True, use_safetensors=has_safetensors
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(local_dir)
    teacher = LoadedTeacher(
        model=model,
        tokenizer=tokenizer,
        local_dir=local_dir,
        weights_sha256=weights_sha256(local_dir),
        missing_keys=sorted(info["missing_keys"]),
    )
    if not teacher.has_mlm_head:
        msg = (
            f"{url} has no trained masked-LM head (missing: "
            f"{', '.join(k for k in teacher.missing_keys if k.startswith(head_prefix(model)))}); its "
            "logits would be noise. Train one first: `distil teacher adapt --teacher "
            f"{url} --input <prepared> --output <url>`, then use --teacher <url>."
        )
        if require_mlm_head:
            raise MissingMLMHeadError(msg)
        log.info(msg)
    return teacher


def mlm_parts(model: Any) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """(encoder, head) of a masked-LM model: ``encoder(input_ids, attention_mask)`` gives hidden
    states; ``head(hidden [N, H])`` gives vocab logits [N, V] for just those rows."""
    return encoder_of(model), head_of(model)
