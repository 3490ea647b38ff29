"""Disagreement mining and the review page (see issue "The feedback loop")."""
