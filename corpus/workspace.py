"""Opening what the stages work on: the migrated catalog and the blob store."""

from __future__ import annotations

from dataclasses import dataclass

from corpus.blobs import BlobStore
from corpus.catalog import Catalog, open_catalog
from spritesafe.config import Settings


@dataclass
class Workspace:
    settings: Settings
    catalog: Catalog
    blobs: BlobStore

    def close(self) -> None:
        self.catalog.dispose()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_workspace(settings: Settings) -> Workspace:
    return Workspace(settings, open_catalog(settings.catalog_url), BlobStore(settings.blob_root))
