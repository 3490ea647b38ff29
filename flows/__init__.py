"""Prefect flows: they compose the stages (plain functions over the catalog), never compute."""
