"""Sample data assembled from registry packages (the only network this project relies on):
the sample corpus ``distil data samples`` writes (``corpus``, with its config in ``config``),
the labelled review sets and their split and text keys (``reviews``), and the registry fetchers
both use (``registry``).

A package of its own, not part of ``distil.data`` or ``distil.sentiment``: it reads the corpus
readers (``distil.data``) and is read by fine-tuning (``distil.sentiment``), so with it inside
either of them the two would import each other.
"""
