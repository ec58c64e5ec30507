"""Stage 4b, ``distil score``, engine-free: its config (``config``), the run plan the launcher
makes under the output's lease (``plan``), what a run writes and how it is published
(``scored``), the commit that ends a run (``commit``), the incremental ledger (``ledger``) and
the one-writer lease (``lease``). The Beam transforms and graph are
``distil.pipelines.score_graph``; the launcher that runs them is
``distil.pipelines.score_reviews``."""
