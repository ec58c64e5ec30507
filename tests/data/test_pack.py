from __future__ import annotations

import numpy as np
import pytest

from distil.data.pack import SequencePacker, pack_sequences, padding_fraction

CLS, SEP, PAD = 101, 102, 0


def make_docs(rng, n, lo=1, hi=400, base=1000):
    """Documents whose ids encode (document, position) so mixing is visible."""
    docs = []
    for d in range(n):
        length = int(rng.integers(lo, hi))
        docs.append([base + d] * length)
    return docs


def check_rows(ids, lengths, seq_len):
    assert ids.shape[1] == seq_len
    for row, length in zip(ids, lengths, strict=True):
        assert 3 <= length <= seq_len
        assert row[0] == CLS and row[length - 1] == SEP
        assert (row[length:] == PAD).all()
        assert row[1] != SEP  # never "[CLS] [SEP] ..."
        assert row[length - 2] != SEP  # never "... [SEP] [SEP]"


@pytest.mark.parametrize("seq_len", [16, 128, 512])
@pytest.mark.parametrize("cross", [True, False])
def test_rows_are_well_formed_and_lose_nothing(seq_len, cross):
    rng = np.random.default_rng(seq_len)
    docs = make_docs(rng, 60)
    ids, lengths = pack_sequences(docs, seq_len, CLS, SEP, PAD, cross_document=cross)
    check_rows(ids, lengths, seq_len)
    content = ids[(ids != CLS) & (ids != SEP) & (ids != PAD)]
    expected = np.concatenate([np.asarray(d) for d in docs])
    assert np.array_equal(content, expected)  # same tokens, same order
    assert padding_fraction(lengths, seq_len) == pytest.approx(1 - lengths.sum() / ids.size)


def test_cross_document_concatenates_with_one_sep_between_documents():
    ids, lengths = pack_sequences([[5] * 3, [6] * 4, [7] * 20], 12, CLS, SEP, PAD)
    assert ids[0].tolist() == [CLS, 5, 5, 5, SEP, 6, 6, 6, 6, SEP, 7, SEP]
    assert ids[1].tolist() == [CLS] + [7] * 10 + [SEP]
    assert ids[2].tolist() == [CLS] + [7] * 9 + [SEP, PAD]  # the tail is kept
    assert lengths.tolist() == [12, 12, 11]


def test_boundary_at_a_full_row_closes_it_instead_of_a_trailing_sep():
    # 9 tokens leave one free slot of 10: no "[SEP] [SEP]"; the row closes one short
    ids, lengths = pack_sequences([[5] * 9, [6] * 3], 12, CLS, SEP, PAD)
    assert ids[0].tolist() == [CLS] + [5] * 9 + [SEP, PAD]
    assert ids[1].tolist()[:5] == [CLS, 6, 6, 6, SEP]


def test_no_cross_document_never_mixes_documents():
    rng = np.random.default_rng(1)
    docs = make_docs(rng, 50, hi=300)
    ids, lengths = pack_sequences(docs, 64, CLS, SEP, PAD, cross_document=False)
    rows_per_doc = [(len(d) + 61) // 62 for d in docs]
    assert len(ids) == sum(rows_per_doc)
    for row, length in zip(ids, lengths, strict=True):
        assert len(set(row[1 : length - 1].tolist())) == 1  # one document per row


def test_streamed_pieces_pack_like_whole_documents():
    """A book fed paragraph by paragraph packs exactly like the whole book at once."""
    rng = np.random.default_rng(2)
    docs = make_docs(rng, 10, hi=900)
    whole = pack_sequences(docs, 128, CLS, SEP, PAD)
    packer = SequencePacker(128, CLS, SEP, PAD)
    for d in docs:
        cuts = sorted(rng.integers(0, len(d), 3).tolist())
        pieces = np.split(np.asarray(d), cuts)
        for i, piece in enumerate(pieces):
            packer.add(piece, new_document=(i == 0))
    packer.finish()
    streamed = packer.take_rows()
    assert np.array_equal(whole[0], streamed[0]) and np.array_equal(whole[1], streamed[1])


def test_empty_documents_leave_no_separator():
    ids, _ = pack_sequences([[5, 5], [], [], [6]], 10, CLS, SEP, PAD)
    assert ids.tolist() == [[CLS, 5, 5, SEP, 6, SEP, PAD, PAD, PAD, PAD]]
