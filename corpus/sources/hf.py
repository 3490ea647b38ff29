"""A Hugging Face `datasets` source: a folder saved with `save_to_disk`, Parquet or Arrow
files, an `imagefolder` tree, or a hub id (only when the user is online).

Each split is a container fingerprinted by the dataset's own fingerprint, so an unchanged
dataset is skipped without reading a row. Images are read undecoded (bytes or path).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from corpus.sources.base import (
    Container,
    Entry,
    Item,
    Known,
    Preloaded,
    Skip,
    SourceBase,
    Unchanged,
    is_unchanged,
)

ROWS_PER_READ = 1024


class DatasetSource(SourceBase):
    def __init__(
        self,
        target: str,
        *,
        split: str | None = None,
        column: str | None = None,
        config_name: str | None = None,
        max_bytes: int,
    ) -> None:
        options = {
            k: v for k, v in (("split", split), ("column", column), ("config", config_name)) if v
        }
        query = "&".join(f"{k}={v}" for k, v in options.items())
        super().__init__(
            name=f"hf:{target}" + (f"?{query}" if query else ""),
            kind="hf",
            uri=target,
            options=options,
        )
        self.target = target
        self.split = split
        self.column = column
        self.config_name = config_name
        self.max_bytes = max_bytes

    def _load(self) -> dict[str, Any]:
        import datasets

        path = Path(self.target)
        loaded: Any
        if path.exists():
            if path.is_dir() and any(
                (path / f).exists() for f in ("dataset_dict.json", "state.json")
            ):
                loaded = datasets.load_from_disk(str(path))
            elif path.is_file() and path.suffix in (".parquet", ".arrow"):
                loaded = datasets.load_dataset(path.suffix[1:], data_files=str(path))
            elif path.is_dir() and next(path.rglob("*.parquet"), None) is not None:
                loaded = datasets.load_dataset("parquet", data_dir=str(path))
            else:
                loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
        else:
            loaded = datasets.load_dataset(self.target, name=self.config_name)
        splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"data": loaded}
        if self.split is not None:
            if self.split not in splits:
                raise ValueError(f"split {self.split!r} not in {sorted(splits)} of {self.target}")
            splits = {self.split: splits[self.split]}
        return splits

    def _image_column(self, dataset: Any) -> str:
        import datasets

        if self.column is not None:
            if self.column not in dataset.features:
                raise ValueError(f"column {self.column!r} not in {list(dataset.features)}")
            return self.column
        for name, feature in dataset.features.items():
            if isinstance(feature, datasets.Image):
                return str(name)
        raise ValueError(f"no Image column in {list(dataset.features)}; name one with ?column=NAME")

    def scan(self, known: Mapping[str, Known]) -> Iterator[Entry]:
        import datasets

        for split, dataset in self._load().items():
            fingerprint = str(dataset._fingerprint)
            if is_unchanged(known, split, fingerprint):
                yield Unchanged(split)
                continue
            column = self._image_column(dataset)
            raw = dataset.select_columns([column]).cast_column(column, datasets.Image(decode=False))
            for start in range(0, len(raw), ROWS_PER_READ):
                values = raw[start : start + ROWS_PER_READ][column]
                for offset, value in enumerate(values):
                    locator = f"{split}/{start + offset}"
                    entry = self._entry(locator, fingerprint, value)
                    if entry is not None:
                        yield entry
            yield Container(split, fingerprint)

    def _entry(self, locator: str, fingerprint: str, value: Any) -> Entry | None:
        if value is None:
            return Skip(locator, "empty_file", "no image in this row", fingerprint)
        data = value.get("bytes")
        if data is None and value.get("path"):
            path = Path(value["path"])
            try:
                if path.stat().st_size > self.max_bytes:
                    return Skip(locator, "file_too_large", str(path), fingerprint)
                data = path.read_bytes()
            except OSError as exc:
                return Skip(locator, "unreadable", f"{path}: {exc.strerror}", fingerprint)
        if data is None:
            return Skip(locator, "empty_file", "row has neither bytes nor path", fingerprint)
        return Item(locator, fingerprint, Preloaded(bytes(data)))
