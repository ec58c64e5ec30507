"""distil: corpora -> distilled BERT student -> review scoring at scale."""

__version__ = "0.1.0"
