import numpy as np

from distil.teacher.masking import mask_batch, mask_sequence, sample_uniforms, selection_weights

CLS, SEP, PAD, MASK, UNK = 101, 102, 0, 103, 100
SPECIAL = np.array([PAD, UNK, CLS, SEP, MASK])
VOCAB = 30522


def _seq(rng: np.random.Generator, length: int, seq_len: int = 64) -> np.ndarray:
    ids = np.full(seq_len, PAD)
    ids[0], ids[length - 1] = CLS, SEP
    ids[1 : length - 1] = rng.integers(1000, 3000, size=length - 2)
    return ids


def _mask(ids, length, seq_id, copy=0, seed=0, weights=None):
    return mask_sequence(
        ids,
        length,
        seed=seed,
        seq_id=seq_id,
        copy=copy,
        special_ids=SPECIAL,
        mask_id=MASK,
        vocab_size=VOCAB,
        weights=weights,
    )


def test_masking_is_a_function_of_seed_seq_id_and_copy():
    ids = _seq(np.random.default_rng(0), 60)
    a, b = _mask(ids, 60, seq_id=7), _mask(ids, 60, seq_id=7)
    assert np.array_equal(a.positions, b.positions)
    assert np.array_equal(a.input_ids, b.input_ids)
    for other in (_mask(ids, 60, 8), _mask(ids, 60, 7, copy=1), _mask(ids, 60, 7, seed=1)):
        assert not np.array_equal(a.positions, other.positions)
    # seq_ids that differ only in the high 32 bits (the shard index) get different masks too
    assert not np.array_equal(a.positions, _mask(ids, 60, seq_id=(1 << 32) | 7).positions)


def test_masking_rate_and_80_10_10_split():
    rng = np.random.default_rng(1)
    chosen = maskable = n_mask = n_random = n_keep = 0
    for seq_id in range(2000):
        length = int(rng.integers(10, 64))
        ids = _seq(rng, length)
        m = _mask(ids, length, seq_id)
        assert np.all(np.diff(m.positions) > 0)  # sorted, unique
        assert not np.isin(ids[m.positions], SPECIAL).any()  # never a special token
        assert np.array_equal(m.labels, ids[m.positions])
        untouched = np.setdiff1d(np.arange(length), m.positions)
        assert np.array_equal(m.input_ids[untouched], ids[untouched])
        assert len(m.input_ids) == length
        chosen += len(m.positions)
        maskable += length - 2
        seen = m.input_ids[m.positions]
        n_mask += int((seen == MASK).sum())
        same = seen == m.labels
        n_keep += int(same.sum())
        n_random += int(((seen != MASK) & ~same).sum())
    assert abs(chosen / maskable - 0.15) < 0.01
    assert abs(n_mask / chosen - 0.8) < 0.02
    # a random draw can hit the original token (1 in 30k): "keep" is 10% + that sliver
    assert abs(n_random / chosen - 0.1) < 0.015
    assert abs(n_keep / chosen - 0.1) < 0.015


def test_smoothing_masks_frequent_tokens_less_often():
    rng = np.random.default_rng(2)
    counts = np.ones(VOCAB)
    counts[1000] = 1_000_000  # a "the"-like token
    weights = selection_weights(counts, 0.7)
    hits_plain = hits_smooth = present = 0
    for seq_id in range(300):
        ids = _seq(rng, 60)
        ids[1:59:3] = 1000  # a third of the tokens are the frequent one
        present += int((ids == 1000).sum())
        hits_plain += int((ids[_mask(ids, 60, seq_id).positions] == 1000).sum())
        hits_smooth += int((ids[_mask(ids, 60, seq_id, weights=weights).positions] == 1000).sum())
    assert hits_plain > 0.1 * present
    assert hits_smooth < 0.1 * hits_plain


def test_sequence_with_nothing_to_mask():
    ids = np.array([CLS, SEP, PAD, PAD])
    m = _mask(ids, 2, seq_id=0)
    assert len(m.positions) == 0 and np.array_equal(m.input_ids, ids[:2])


def _batch(n: int, width: int = 64, seed: int = 3):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, width + 1, size=n)
    ids = np.stack([_seq(rng, int(length), width) for length in lengths])
    seq_ids = (rng.integers(0, 50, size=n) << 32) | rng.integers(0, 1 << 20, size=n)
    copies = rng.integers(0, 4, size=n)
    return ids, lengths, seq_ids, copies


KW = {"seed": 5, "special_ids": SPECIAL, "mask_id": MASK, "vocab_size": VOCAB}


def test_batch_masking_equals_the_per_sequence_function_row_by_row():
    ids, lengths, seq_ids, copies = _batch(300)
    weights = selection_weights(np.arange(VOCAB) % 97 + 1, 0.7)
    for w in (None, weights):
        out = mask_batch(ids, lengths, seq_ids, copies, weights=w, **KW)
        offsets, positions = out.positions()
        for r in range(len(ids)):
            one = mask_sequence(
                ids[r],
                int(lengths[r]),
                seq_id=int(seq_ids[r]),
                copy=int(copies[r]),
                weights=w,
                **KW,
            )
            assert np.array_equal(out.input_ids[r, : lengths[r]], one.input_ids)
            assert np.array_equal(positions[offsets[r] : offsets[r + 1]], one.positions)
            assert np.array_equal(out.labels[offsets[r] : offsets[r + 1]], one.labels)
            assert np.array_equal(out.input_ids[r, lengths[r] :], ids[r, lengths[r] :])


def test_a_rows_mask_does_not_depend_on_its_batch():
    ids, lengths, seq_ids, copies = _batch(200)
    whole = mask_batch(ids, lengths, seq_ids, copies, **KW)
    perm = np.random.default_rng(0).permutation(len(ids))
    shuffled = mask_batch(ids[perm], lengths[perm], seq_ids[perm], copies[perm], **KW)
    assert np.array_equal(shuffled.input_ids, whole.input_ids[perm])
    assert np.array_equal(shuffled.selected, whole.selected[perm])
    for lo, hi in ((0, 1), (1, 77), (77, 200)):  # other splits, trimmed to their longest row
        width = int(lengths[lo:hi].max())
        part = mask_batch(ids[lo:hi, :width], lengths[lo:hi], seq_ids[lo:hi], copies[lo:hi], **KW)
        assert np.array_equal(part.input_ids, whole.input_ids[lo:hi, :width])
        assert np.array_equal(part.selected, whole.selected[lo:hi, :width])


def test_sampling_uniforms_are_per_position_and_differ_between_streams():
    seq_ids, copies, positions = np.array([7, 7, 8]), np.array([0, 1, 0]), np.array([3, 3, 3])
    u = sample_uniforms(0, seq_ids, copies, positions, 4)
    assert u.shape == (3, 4) and np.all((u >= 0) & (u < 1))
    assert np.array_equal(u[::-1], sample_uniforms(0, seq_ids[::-1], copies[::-1], positions, 4))
    assert len({tuple(r) for r in u}) == 3  # copy and seq_id change the draws
    assert not np.array_equal(u, sample_uniforms(1, seq_ids, copies, positions, 4))
    many = sample_uniforms(0, np.arange(20000), np.zeros(20000, int), np.zeros(20000, int), 8)
    assert abs(many.mean() - 0.5) < 0.005 and abs(many.var() - 1 / 12) < 0.002
