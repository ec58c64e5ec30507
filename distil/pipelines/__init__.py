"""Beam pipelines: ``python -m distil.pipelines.score_reviews`` (what ``pipelines/score_reviews.py`` runs)."""
