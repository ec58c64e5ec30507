"""The fine-tuned classifier as an artifact: export, ``latest`` pointer, fetch-and-verify, and the
fast inference path that ``distil score`` and ``bench/score.py`` use.

A model directory is a plain HF ``…ForSequenceClassification`` dir (``model.safetensors``,
``config.json`` with ``id2label``, tokenizer files, ``metrics.json``) plus a ``manifest.json``
listing every file with its sha256. The manifest's ``fingerprint`` is what scored rows carry
as ``model_fingerprint``, and what the local cache is keyed by.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import tempfile
import uuid
import warnings
from typing import Any, NamedTuple

import numpy as np

from distil import model_registry, storage

MODEL_KIND = "sentiment_model"
POINTER_KIND = "latest_model"
# how --quantize makes int8 weights (results keyed by it change when it does)
INT8_SCHEME = "dynamic-per-channel"


def export_classifier(
    model: Any, tokenizer: Any, url: str, metrics: dict[str, Any], extra: dict | None = None
) -> dict[str, Any]:
    """Save an HF classifier + tokenizer + metrics.json to ``url``; manifest (with hashes) last."""
    with tempfile.TemporaryDirectory(prefix="distil-export-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2, sort_keys=True)
        files = []
        for name in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, name), "rb") as f:
                data = f.read()
            files.append({"name": name, "bytes": len(data), "sha256": storage.sha256_bytes(data)})
        storage.upload_dir(tmp, url)
    manifest = {
        "kind": MODEL_KIND,
        "files": files,
        "id2label": {str(k): v for k, v in model.config.id2label.items()},
        "metrics": metrics,
        # identifies the model (weights, config, tokenizer), not the run that made it:
        # metrics.json carries wall-clock times, so two identical trainings would differ
        "fingerprint": storage.fingerprint(
            [(f["name"], f["sha256"]) for f in files if f["name"] != "metrics.json"]
        ),
        **(extra or {}),
    }
    storage.commit(url, manifest)
    return manifest


def write_latest_pointer(pointer_url: str, model_url: str, manifest: dict[str, Any]) -> None:
    """Point ``pointer_url`` (a small JSON) at the newest model. One PUT / an atomic rename, so a
    scheduled ``distil score --model POINTER`` sees the old or the new model, never half."""
    storage.write_json(
        pointer_url,
        {
            "kind": POINTER_KIND,
            "model": model_url,
            "fingerprint": manifest["fingerprint"],
            "metrics": manifest.get("metrics", {}),
            "updated_at": dt.datetime.now(dt.UTC).isoformat(),
        },
    )


class ResolvedModel(NamedTuple):
    url: str  # the committed model dir
    version: str | None  # ``models:/NAME/VERSION`` when resolved through the registry


def resolve_model(ref: str) -> ResolvedModel:
    """The model dir a reference names: a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``
    URI (through the MLflow Model Registry: the version the alias points at now, which the
    caller records, since the alias may move), a ``latest`` pointer (a ``.json`` object), or
    the dir's own URL."""
    if model_registry.is_registry_uri(ref):
        found = model_registry.resolve(ref)
        return ResolvedModel(found.source, found.uri)
    if ref.endswith(".json"):
        pointer = storage.read_json(ref)
        if pointer.get("kind") != POINTER_KIND:
            raise ValueError(f"{ref} is not a latest-model pointer (kind={pointer.get('kind')})")
        return ResolvedModel(pointer["model"], None)
    return ResolvedModel(ref, None)


def resolve_model_url(ref: str) -> str:
    """The model dir URL of a reference (see :func:`resolve_model`)."""
    return resolve_model(ref).url


def verify_model(url: str) -> dict[str, Any]:
    """The committed manifest of the model dir ``url``, after checking every file it lists
    against its sha256 (streamed, nothing written): a launcher calls it so that a model whose
    files do not match is refused before any worker starts, not after rows were read."""
    manifest = storage.read_manifest(url)
    for entry in manifest["files"]:
        got = storage.sha256_url(storage.join(url, entry["name"]))
        if got != entry["sha256"]:
            raise ValueError(
                f"{storage.redact(url)}/{entry['name']}: sha256 {got[:12]}… does not "
                f"match the manifest ({entry['sha256'][:12]}…); refusing to score with it"
            )
    return manifest


def fetch_model(url: str, cache_dir: str) -> tuple[str, str]:
    """``(local_dir, fingerprint)``: the model at ``url`` pulled once into ``cache_dir`` and every
    file checked against the sha256 in its manifest. Concurrent callers (Beam worker processes
    on one machine) each download to a private temp dir and rename it into place: the first
    rename wins, the others find the finished copy and throw theirs away.

    A directory without our manifest (a user's own HF checkpoint) is hashed as it is pulled and
    keyed by that hash.
    """
    url = resolve_model_url(url)
    os.makedirs(cache_dir, exist_ok=True)
    manifest = None
    with contextlib.suppress(storage.NotCommittedError):
        manifest = storage.read_manifest(url)
    if manifest is not None:
        final = os.path.join(cache_dir, manifest["fingerprint"])
        if os.path.exists(os.path.join(final, ".verified")):
            return final, manifest["fingerprint"]
    tmp = os.path.join(cache_dir, f".tmp-{uuid.uuid4().hex}")
    try:
        if manifest is not None:
            os.makedirs(tmp)
            for entry in manifest["files"]:
                data = storage.read_bytes(storage.join(url, entry["name"]))
                got = storage.sha256_bytes(data)
                if got != entry["sha256"]:
                    raise ValueError(
                        f"{storage.redact(url)}/{entry['name']}: sha256 {got[:12]}… does not "
                        f"match the manifest ({entry['sha256'][:12]}…); refusing to load it"
                    )
                with open(os.path.join(tmp, entry["name"]), "wb") as f:
                    f.write(data)
            fingerprint = manifest["fingerprint"]
        else:
            storage.copy_dir_to_local(url, tmp) if "://" in url else shutil.copytree(url, tmp)
            hashes = []
            for name in sorted(os.listdir(tmp)):
                with open(os.path.join(tmp, name), "rb") as f:
                    hashes.append((name, storage.sha256_bytes(f.read())))
            fingerprint = storage.fingerprint(hashes)
            final = os.path.join(cache_dir, fingerprint)
        open(os.path.join(tmp, ".verified"), "w").close()
        try:
            os.rename(tmp, final)
        except OSError:  # another process got there first; its copy is verified too
            if not os.path.exists(os.path.join(final, ".verified")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final, fingerprint


class SequenceClassifier:
    """Tokenize + classify with as little per-row Python as possible.

    What makes it faster than ``transformers.pipeline`` (see bench/score.py): the Rust tokenizer
    encodes a whole batch in one call; rows are sorted by length and run in micro-batches padded
    only to the longest row of each, so short reviews don't pay for long ones; ``inference_mode``;
    one softmax per micro-batch; optional dynamic int8 Linear layers or bf16 autocast.
    """

    def __init__(
        self,
        local_dir: str,
        *,
        max_length: int = 256,
        quantize: bool = False,
        bf16: bool | None = False,
        torch_threads: int | None = None,
        device: str = "cpu",
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = torch.device(device)
        if bf16 is None:  # the default: bf16 where it is the fast path (tensor cores)
            bf16 = self.device.type == "cuda" and not quantize
        if quantize and bf16:
            raise ValueError("choose one of int8 quantisation and bf16, not both")
        if quantize and self.device.type != "cpu":
            raise ValueError("int8 quantisation runs on the CPU only: drop --quantize on a GPU")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"--device {device} but torch sees no CUDA device here")
        self.local_dir = local_dir
        self.max_length = max_length
        self.bf16 = bf16
        model = AutoModelForSequenceClassification.from_pretrained(local_dir)
        # on a GPU, bf16 weights (no per-batch casts of fp32 weights under autocast)
        dtype = torch.bfloat16 if bf16 and self.device.type == "cuda" else torch.float32
        model.eval().to(self.device, dtype)
        if quantize:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao eager quantisation is deprecated
                # per output channel: one scale per row of each weight, not one per matrix
                # (per-tensor int8 cost the quality table's classifiers 0.6-2 points of
                # validation accuracy; per channel, within 0.6 either way: docs/quality.md)
                qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
                model = torch.ao.quantization.quantize_dynamic(
                    model, {torch.nn.Linear: qconfig}, dtype=torch.qint8
                )
        self.model = model
        self.id2label = {int(k): v for k, v in model.config.id2label.items()}
        hf_tok = AutoTokenizer.from_pretrained(local_dir)
        # A private copy of the Rust tokenizer: our own truncation (some tokenizer.json files
        # ship one switched on), no padding (we pad per micro-batch).
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(hf_tok.backend_tokenizer.to_str())
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        self.pad_id = hf_tok.pad_token_id or 0

    def tokenize(self, texts: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
        """Token ids per text and a truncated flag per text (one Rust call for the batch)."""
        encs = self.tokenizer.encode_batch(texts)
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encs]
        truncated = np.fromiter((len(e.overflowing) > 0 for e in encs), bool, len(encs))
        return ids, truncated

    def logits(self, ids: list[np.ndarray], micro_batch_size: int | None = 64) -> np.ndarray:
        """``[n, num_labels]`` float32 logits, in the order of ``ids``; ``micro_batch_size``
        rows per forward pass, length-sorted (None: every row in one forward pass, padded to
        the longest: the GPU default, where one large pass beats many small ones)."""
        import torch

        from distil.student.model import encoder_mask

        n = len(ids)
        out = np.empty((n, len(self.id2label)), dtype=np.float32)
        if n == 0:
            return out
        lengths = np.fromiter((len(x) for x in ids), np.int64, n)
        flat = np.concatenate(ids) if n else np.zeros(0, np.int64)
        starts = np.cumsum(lengths) - lengths
        order = np.argsort(lengths, kind="stable")
        step = micro_batch_size or n
        # bf16 autocast on CPU (AVX512-BF16 / AMX); on a GPU the weights are bf16 already.
        # Softmax and LayerNorm stay fp32 under autocast; logits come back as fp32.
        cpu_bf16 = self.bf16 and self.device.type == "cpu"
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cpu_bf16)
        cuda = self.device.type == "cuda"
        parts = []
        with torch.inference_mode(), autocast:
            for start in range(0, n, step):
                idx = order[start : start + step]
                width = int(lengths[idx].max())
                # padded [rows, width] ids from the flat ids in one vectorised gather
                cols = np.arange(width)[None, :]
                inside = cols < lengths[idx][:, None]
                src = np.where(inside, starts[idx][:, None] + cols, 0)
                batch = torch.from_numpy(np.where(inside, flat[src], self.pad_id))
                mask = torch.from_numpy(inside)
                if cuda:  # pinned: the copies are async and the host goes on
                    batch, mask = batch.pin_memory(), mask.pin_memory()
                # no mask when no row is padded (known here, on the host); otherwise a 4-D one
                # for SDPA: a 2-D mask is checked with .all() on every forward, a device sync
                am = encoder_mask(
                    self.model, mask.to(self.device, non_blocking=True), bool(inside.all())
                )
                logits = self.model(
                    input_ids=batch.to(self.device, non_blocking=True), attention_mask=am
                ).logits
                parts.append(logits.float())  # stays on the device: one copy back at the end
        out[order] = torch.cat(parts).cpu().numpy()
        return out

    def classify(
        self, texts: list[str], micro_batch_size: int | None = 64
    ) -> dict[str, np.ndarray]:
        ids, truncated = self.tokenize(texts)
        logits = self.logits(ids, micro_batch_size)
        probs = softmax(logits)
        return {
            "label_id": probs.argmax(-1),
            "probs": probs,
            "truncated": truncated,
            "n_tokens": np.fromiter((len(x) for x in ids), np.int32, len(ids)),
        }


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))
