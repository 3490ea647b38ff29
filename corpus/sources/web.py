"""URLs: one URL, or a list file with one URL per line (`#` starts a comment)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from corpus.fetch import Previous, fetch_urls
from corpus.sources.base import Entry, Item, Known, Preloaded, Skip, SourceBase, Unchanged
from spritesafe.config import HttpSettings

CHUNK = 64  # URLs fetched concurrently before their images are handed to ingest


def read_url_list(path: Path) -> list[str]:
    urls: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip() if line.lstrip().startswith("#") else line.strip()
        if text:
            urls.setdefault(text, None)
    return list(urls)


class UrlSource(SourceBase):
    def __init__(
        self, settings: HttpSettings, *, url: str | None = None, list_file: Path | None = None
    ) -> None:
        if (url is None) == (list_file is None):
            raise ValueError("give exactly one of url or list_file")
        if url is not None:
            super().__init__(name=url, kind="url", uri=url)
        else:
            assert list_file is not None
            list_file = list_file.expanduser().absolute()
            super().__init__(name=f"urls:{list_file}", kind="urls", uri=str(list_file))
        self.settings = settings
        self.url = url
        self.list_file = list_file

    def urls(self) -> list[str]:
        if self.url is not None:
            return [self.url]
        assert self.list_file is not None
        if not self.list_file.is_file():
            raise FileNotFoundError(f"URL list not found: {self.list_file}")
        return read_url_list(self.list_file)

    def scan(self, known: Mapping[str, Known]) -> Iterator[Entry]:
        urls = self.urls()
        for start in range(0, len(urls), CHUNK):
            chunk = urls[start : start + CHUNK]
            previous = {
                url: Previous(k.etag, k.last_modified) for url in chunk if (k := known.get(url))
            }
            for result in fetch_urls(chunk, previous, self.settings):
                self.stats[f"http_{result.outcome}"] += 1
                self.stats["http_attempts"] += result.attempts
                if result.outcome == "not_modified":
                    yield Unchanged(result.url)
                elif result.outcome == "rejected":
                    yield Skip(result.url, result.reason or "http_error", result.detail)
                else:
                    validators = (result.etag, result.last_modified)
                    fingerprint = (
                        f"etag={validators[0]}|lm={validators[1]}" if any(validators) else None
                    )
                    yield Item(
                        result.url,
                        fingerprint,
                        Preloaded(result.data),
                        etag=result.etag,
                        last_modified=result.last_modified,
                    )
