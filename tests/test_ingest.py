"""Ingest over real folders, archives, sheets, tilesets and datasets; bad input; increments."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from corpus.catalog import images, source_items
from corpus.ingest import ingest
from corpus.sources import parse_source
from corpus.workspace import Workspace, open_workspace
from spritesafe.config import Settings, load_settings
from tests.helpers import CDDA, encode, png, png_bomb, sprite, upscale


def run(ws: Workspace, *specs: str, **kwargs: object):  # type: ignore[no-untyped-def]
    sources = [parse_source(spec, ws.settings) for spec in specs]
    return ingest(ws.catalog, ws.blobs, sources, ws.settings, **kwargs)  # type: ignore[arg-type]


def items_by_locator(ws: Workspace) -> dict[str, sa.Row]:  # type: ignore[type-arg]
    with ws.catalog.read() as conn:
        rows = conn.execute(sa.select(source_items)).all()
    return {row.locator: row for row in rows}


@pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")  # the zip case is deliberate
def test_bad_input_is_recorded_and_the_run_goes_on(tmp_path: Path, ws: Workspace) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "zoo"
    (root / "sub1").mkdir(parents=True)
    (root / "sub2").mkdir()
    (root / "sub3").mkdir()
    good = png(sprite(rng))
    (root / "sub1" / "sprite.png").write_bytes(good)
    (root / "sub2" / "sprite.png").write_bytes(png(sprite(rng)))  # same name, other bytes
    (root / "sub3" / "sprite.png").write_bytes(good)  # same name, same bytes
    (root / "empty.png").write_bytes(b"")
    (root / "truncated.png").write_bytes(png(rng.integers(0, 255, (64, 64, 4), np.uint8))[:5000])
    (root / "notes.txt").write_text("not an image\n")
    (root / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (root / "bomb.png").write_bytes(png_bomb(30_000, 30_000))
    (root / "strip.png").write_bytes(encode(Image.new("L", (20_000, 2), 3), "PNG"))
    (root / "blank.png").write_bytes(png(np.zeros((16, 16, 4), np.uint8)))
    gray16 = Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)
    (root / "gray16.png").write_bytes(encode(gray16, "PNG"))
    rgb = Image.fromarray(sprite(rng, 16)).convert("RGB")
    (root / "cmyk.jpg").write_bytes(encode(rgb.convert("CMYK"), "JPEG"))
    (root / "palette.png").write_bytes(encode(Image.fromarray(sprite(rng, 16)).convert("P"), "PNG"))
    frames = [Image.fromarray(sprite(rng, 16)).convert("RGB") for _ in range(3)]
    (root / "anim.gif").write_bytes(
        encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    )
    (root / "anim.webp").write_bytes(
        encode(frames[0], "WEBP", lossless=True, save_all=True, append_images=frames[1:])
    )
    (root / "anim.png").write_bytes(
        encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    )
    (root / ".DS_Store").write_bytes(b"junk")  # dot-files are ignored
    (root / "loop").mkdir()
    (root / "loop" / "up").symlink_to("..")  # directory symlink loop
    (root / "a.png").symlink_to("b.png")
    (root / "b.png").symlink_to("a.png")  # file symlink loop
    (root / "dangling.png").symlink_to("missing.png")
    (root / "unreadable.png").symlink_to("/proc/self/mem")  # EIO on read, even for root
    os.mkfifo(root / "pipe.png")
    with zipfile.ZipFile(root / "pack.zip", "w") as archive:
        archive.writestr("inside.png", png(sprite(rng)))
        archive.writestr("../escape.png", good)
        archive.writestr("/abs.png", good)
        archive.writestr("dup.png", png(sprite(rng)))
        archive.writestr("dup.png", png(sprite(rng)))  # zip allows repeated names
    with tarfile.open(root / "pack.tar.gz", "w:gz") as archive:
        data = png(sprite(rng))
        info = tarfile.TarInfo("member.png")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        archive.addfile(link)
    (root / "corrupt.zip").write_bytes(b"PK\x03\x04 this is not a zip")

    report = run(ws, str(root))
    assert report.status == "ok"
    items = items_by_locator(ws)
    expected = {
        "empty.png": "empty_file",
        "truncated.png": "truncated",
        "notes.txt": "not_an_image",
        "drawing.svg": "vector_image",
        "bomb.png": "decompression_bomb",
        "strip.png": "dimensions_too_large",
        "blank.png": "blank_image",
        "loop/up": "symlink_loop",
        "a.png": "symlink_loop",
        "b.png": "symlink_loop",
        "dangling.png": "broken_symlink",
        "unreadable.png": "unreadable",
        "pipe.png": "not_a_regular_file",
        "pack.zip!../escape.png": "unsafe_archive_path",
        "pack.zip!/abs.png": "unsafe_archive_path",
        "pack.tar.gz!link.png": "archive_link",
        "corrupt.zip": "bad_archive",
    }
    for locator, reason in expected.items():
        assert locator in items, locator
        assert (items[locator].status, items[locator].reason) == ("rejected", reason), locator
    assert "refused before decoding" in items["bomb.png"].detail
    accepted = [
        "sub1/sprite.png",
        "sub2/sprite.png",
        "sub3/sprite.png",
        "gray16.png",
        "cmyk.jpg",
        "palette.png",
        "anim.gif",
        "anim.webp",
        "anim.png",
        "pack.zip!inside.png",
        "pack.zip!dup.png",
        "pack.zip!dup.png#2",
        "pack.tar.gz!member.png",
    ]
    for locator in accepted:
        assert items[locator].status == "ok", (locator, items[locator].reason)
    assert items["pack.zip"].status == items["pack.tar.gz"].status == "container"
    assert ".DS_Store" not in items
    # Same bytes under two names: one image, two provenance rows.
    assert items["sub1/sprite.png"].image_id == items["sub3/sprite.png"].image_id
    assert items["sub1/sprite.png"].image_id != items["sub2/sprite.png"].image_id
    with ws.catalog.read() as conn:
        frames_of = dict(
            conn.execute(
                sa.select(source_items.c.locator, images.c.frames)
                .join(images, images.c.id == source_items.c.image_id)
                .where(source_items.c.locator.like("anim.%"))
            ).all()
        )
    assert frames_of == {"anim.gif": 3, "anim.webp": 3, "anim.png": 3}

    # Nothing is retried or duplicated on a re-run over the unchanged folder.
    again = run(ws, str(root))
    assert again.processed == 0 and again.new_images == 0
    assert items_by_locator(ws).keys() == items.keys()


def test_second_run_adds_nothing_and_changes_are_picked_up(tmp_path: Path, ws: Workspace) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / "sprites"
    root.mkdir()
    for i in range(60):
        (root / f"s{i:03}.png").write_bytes(png(sprite(rng)))
    first = run(ws, str(root))
    assert (first.processed, first.new_images, first.unchanged) == (60, 60, 0)
    second = run(ws, str(root))
    assert (second.processed, second.new_images, second.unchanged) == (0, 0, 60)
    (root / "s000.png").write_bytes(png(sprite(rng)))
    (root / "new.png").write_bytes(png(sprite(rng)))
    third = run(ws, str(root))
    assert (third.processed, third.new_images, third.unchanged) == (2, 2, 59)
    with ws.catalog.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(images)).scalar() == 62
        assert conn.execute(sa.select(sa.func.count()).select_from(source_items)).scalar() == 61


def test_worker_processes_give_the_same_catalog_as_inline(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    root = tmp_path / "sprites"
    root.mkdir()
    for i in range(300):
        (root / f"{i}.png").write_bytes(png(upscale(sprite(rng), 1 + i % 3)))
    results = []
    for workers in (1, 2):
        settings = load_settings(
            data_dir=tmp_path / f"d{workers}", ingest={"workers": workers, "batch_size": 128}
        )
        workspace = open_workspace(settings)
        report = run(workspace, str(root))
        assert report.processed == 300
        with workspace.catalog.read() as conn:
            rows = conn.execute(
                sa.select(
                    images.c.sha256, images.c.canonical_sha256, images.c.phash, images.c.pixel_scale
                )
            ).all()
        results.append(sorted(tuple(r) for r in rows))
        workspace.close()
    assert results[0] == results[1]


def test_sheet_grid_with_offset_and_spacing(tmp_path: Path, ws: Workspace) -> None:
    rng = np.random.default_rng(3)
    cells = {}
    sheet = np.zeros((2 + 3 * 18, 1 + 4 * 19, 4), np.uint8)  # offset 1,2; tile 16; spacing 3,2
    for row in range(3):
        for col in range(4):
            if (row, col) == (1, 2):
                continue  # an empty cell
            x, y = 1 + col * 19, 2 + row * 18
            cells[(x, y)] = sprite(rng, 16)
            sheet[y : y + 16, x : x + 16] = cells[(x, y)]
    path = tmp_path / "sheet.png"
    path.write_bytes(png(sheet))
    report = run(ws, f"sheet:{path}?tile=16x16&offset=1,2&spacing=3,2")
    assert report.processed == 11
    assert report.sources[0].stats == {"sheets": 1, "cells": 11, "empty_cells": 1}
    items = items_by_locator(ws)
    with ws.catalog.read() as conn:
        keys = dict(conn.execute(sa.select(images.c.id, images.c.blob_key)).all())
    for (x, y), cell in cells.items():
        row = items[f"sheet.png#{x},{y},16,16"]
        stored = np.array(Image.open(io.BytesIO(ws.blobs.get(keys[row.image_id]))))
        assert np.array_equal(stored, cell)
    assert run(ws, f"sheet:{path}?tile=16x16&offset=1,2&spacing=3,2").unchanged == 1


def test_real_tileset_from_tile_config(ws: Workspace, debian_sprites: None) -> None:
    config = CDDA / "HoderTileset" / "tile_config.json"
    report = run(ws, f"tileset:{config}")
    assert report.status == "ok"
    stats = report.sources[0].stats
    layout = json.loads(config.read_text())
    expected_cells = 0
    for sheet in layout["tiles-new"]:
        w = sheet.get("sprite_width", layout["tile_info"][0]["width"])
        h = sheet.get("sprite_height", layout["tile_info"][0]["height"])
        width, height = Image.open(config.parent / sheet["file"]).size
        expected_cells += (width // w) * (height // h)
    assert stats["sheets"] == len(layout["tiles-new"])
    assert stats["cells"] + stats["empty_cells"] == expected_cells
    assert report.processed == stats["cells"] > 1000
    # Every sprite is a real, decodable image of the sheet's cell size.
    with ws.catalog.read() as conn:
        sizes = conn.execute(
            sa.select(images.c.width, images.c.height, sa.func.count()).group_by(
                images.c.width, images.c.height
            )
        ).all()
    assert {(w, h) for w, h, _ in sizes} <= {(16, 16), (20, 24)}


def test_huggingface_datasets_sources(tmp_path: Path, ws: Workspace) -> None:
    import datasets

    rng = np.random.default_rng(4)
    blobs = [png(sprite(rng)) for _ in range(12)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int32")})
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in blobs], "label": list(range(12))},
        features=features,
    )
    table.save_to_disk(str(tmp_path / "saved"))
    table.to_parquet(str(tmp_path / "data.parquet"))
    folder = tmp_path / "imagefolder" / "train" / "sfw"
    folder.mkdir(parents=True)
    for i, data in enumerate(blobs[:5]):
        (folder / f"{i}.png").write_bytes(data)

    saved = run(ws, f"hf:{tmp_path / 'saved'}")
    assert (saved.processed, saved.new_images) == (12, 12)
    parquet = run(ws, f"hf:{tmp_path / 'data.parquet'}")
    assert (parquet.processed, parquet.new_images, parquet.sources[0].linked) == (12, 0, 12)
    imagefolder = run(ws, f"hf:{tmp_path / 'imagefolder'}")
    assert imagefolder.processed == 5 and imagefolder.new_images == 0
    again = run(ws, f"hf:{tmp_path / 'saved'}")
    assert (again.processed, again.unchanged) == (0, 1)  # the split, skipped by fingerprint


def test_blob_store_can_be_any_fsspec_url(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path / "d", blob_url="memory://ingest-test-blobs", ingest={"workers": 1}
    )
    workspace = open_workspace(settings)
    rng = np.random.default_rng(5)
    root = tmp_path / "s"
    root.mkdir()
    data = png(sprite(rng))
    (root / "x.png").write_bytes(data)
    run(workspace, str(root))
    with workspace.catalog.read() as conn:
        key = conn.execute(sa.select(images.c.blob_key)).scalar_one()
    assert workspace.blobs.get(key) == data
    workspace.close()


def test_missing_source_fails_alone(tmp_path: Path, ws: Workspace) -> None:
    root = tmp_path / "ok"
    root.mkdir()
    (root / "x.png").write_bytes(png(sprite(np.random.default_rng(6))))
    report = run(ws, str(tmp_path / "missing"), str(root))
    assert report.status == "failed"
    assert "not found" in str(report.sources[0].error)
    assert report.sources[1].processed == 1


def test_limits_come_from_settings(tmp_path: Path) -> None:
    settings: Settings = load_settings(
        data_dir=tmp_path / "d", image={"max_bytes": 100}, ingest={"workers": 1}
    )
    workspace = open_workspace(settings)
    root = tmp_path / "s"
    root.mkdir()
    (root / "big.png").write_bytes(png(sprite(np.random.default_rng(7), 32)))
    run(workspace, str(root))
    assert items_by_locator(workspace)["big.png"].reason == "file_too_large"
    workspace.close()


@pytest.mark.parametrize(
    "spec",
    ["sheet:x.png", "sheet:x.png?tile=0x16", "sheet:x.png?tile=16x16&bogus=1", "hf:x?nope=1"],
)
def test_bad_specs_are_explained(spec: str, settings: Settings) -> None:
    from corpus.sources import SourceSpecError

    with pytest.raises(SourceSpecError):
        parse_source(spec, settings)
