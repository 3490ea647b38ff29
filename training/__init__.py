"""Snapshot and training of the MobileNetV4 student (see issue "Snapshot and training")."""
