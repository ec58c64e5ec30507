"""Teachers of the RoBERTa and XLM-RoBERTa families, built in code: a tokenizer trained with the
``tokenizers`` library on the given texts (byte-level BPE for RoBERTa; SentencePiece Unigram for
XLM-R, its vocabulary padded past 65,536 ids) and a small random-init ``…ForMaskedLM``."""

from __future__ import annotations

from pathlib import Path

ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
# the special-token roles of RoBERTa and XLM-R tokenizers (the same strings for both)
ROBERTA_ROLES = dict(
    bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>", unk_token="<unk>",
    pad_token="<pad>", mask_token="<mask>",
)  # fmt: skip
UINT16_IDS = 65_536


def roberta_tokenizer(texts: list[str], vocab_size: int = 800):
    """A ``RobertaTokenizerFast`` from a byte-level BPE trained on ``texts`` (built from the
    trained object: from vocab/merges files transformers 5 silently builds a 5-token vocab)."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=ROBERTA_SPECIALS)
    tok = bpe._tokenizer
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>"))
    )
    return RobertaTokenizerFast(tokenizer_object=tok, **ROBERTA_ROLES)


def xlmr_tokenizer(texts: list[str], vocab_size: int = 600, first_id: int = UINT16_IDS + 64):
    """An ``XLMRobertaTokenizerFast`` from a SentencePiece Unigram trained on ``texts``, laid out
    as XLM-R's (``<s> <pad> </s> <unk>`` first, ``<mask>`` last) with never-used filler pieces
    before the trained ones, so every real piece has an id >= ``first_id`` (past uint16)."""
    import json

    from tokenizers import SentencePieceUnigramTokenizer, Tokenizer, models, processors
    from transformers import XLMRobertaTokenizerFast

    sp = SentencePieceUnigramTokenizer()
    sp.train_from_iterator(
        texts, vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"]
    )
    trained = json.loads(sp._tokenizer.to_str())["model"]["vocab"]
    specials = [[t, 0.0] for t in ("<s>", "<pad>", "</s>", "<unk>")]
    pieces = [p for p in trained if p[0] not in {"<s>", "<pad>", "</s>", "<unk>"}]
    filler = [[f"\u2581\u2400filler{i}", -100.0] for i in range(first_id - len(specials))]
    vocab = [*specials, *filler, *pieces, ["<mask>", 0.0]]
    tok = Tokenizer(models.Unigram([tuple(p) for p in vocab], unk_id=3, byte_fallback=False))
    tok.normalizer = sp._tokenizer.normalizer
    tok.pre_tokenizer = sp._tokenizer.pre_tokenizer
    tok.decoder = sp._tokenizer.decoder
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return XLMRobertaTokenizerFast(tokenizer_object=tok, **ROBERTA_ROLES)


def save_family_teacher(
    out: Path,
    family: str,
    texts: list[str],
    layers: int = 4,
    seed: int = 0,
    max_len: int = 128,
    headless: bool = False,
) -> Path:
    """A random-init ``RobertaForMaskedLM`` / ``XLMRobertaForMaskedLM`` (hidden 32; with
    ``headless`` the bare ``…Model`` encoder) with its tokenizer trained on ``texts``, saved (and
    the tokenizer re-saved through ``AutoTokenizer``, as a user's checkpoint dir would be)."""
    import torch
    from transformers import (
        AutoTokenizer,
        RobertaConfig,
        RobertaForMaskedLM,
        RobertaModel,
        XLMRobertaConfig,
        XLMRobertaForMaskedLM,
        XLMRobertaModel,
    )

    if family == "roberta":
        tok, config_cls = roberta_tokenizer(texts), RobertaConfig
        model_cls = RobertaModel if headless else RobertaForMaskedLM
    else:
        tok, config_cls = xlmr_tokenizer(texts), XLMRobertaConfig
        model_cls = XLMRobertaModel if headless else XLMRobertaForMaskedLM
    torch.manual_seed(seed)
    cfg = config_cls(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        # RoBERTa's position ids start at padding_idx + 1
        max_position_embeddings=max_len + tok.pad_token_id + 1,
        type_vocab_size=1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    out.mkdir(parents=True, exist_ok=True)
    model_cls(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    AutoTokenizer.from_pretrained(out).save_pretrained(out)
    return out
