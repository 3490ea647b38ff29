"""The model's one preprocessing: pixel-exact enlargement, area shrink, padding, spec."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from spritesafe.preprocess import PreprocessSpec, fit, from_bytes, from_pixels, normalize
from tests.helpers import png, sprite, upscale

SPEC = PreprocessSpec()


@pytest.mark.parametrize(("side", "k"), [(32, 5), (10, 16), (16, 10), (160, 1), (7, 22)])
def test_small_sprites_become_exact_blocks(side: int, k: int) -> None:
    pixels = sprite(np.random.default_rng(side), side)[..., :3].copy()
    out = fit(pixels, SPEC)
    assert out.shape == (160, 160, 3)
    pad = (160 - side * k) // 2
    inner = out[pad : pad + side * k, pad : pad + side * k]
    assert np.array_equal(inner, upscale(pixels, k))
    assert (out[:pad] == 255).all() and (out[pad + side * k :] == 255).all()


def test_large_images_are_area_averaged() -> None:
    pixels = np.zeros((320, 320, 3), np.uint8)
    pixels[::2, ::2] = 255  # one lit pixel per 2x2 block: area averaging gives flat grey
    out = fit(pixels, SPEC)
    assert set(np.unique(out).tolist()) <= {63, 64}  # 255 / 4, never aliased to 0 or 255
    wide = fit(np.zeros((320, 480, 3), np.uint8), SPEC)
    assert (wide[27:133] == 0).all() and (wide[:26] == 255).all()  # 160 x 107, centred


def test_same_sprite_any_scale_same_input() -> None:
    tile = sprite(np.random.default_rng(9), 16)
    a, b = from_bytes(png(tile), SPEC), from_bytes(png(upscale(tile, 4)), SPEC)
    assert a.shape == (3, 160, 160) and a.dtype == np.float32
    assert np.array_equal(a, b)


def test_normalization_and_spec_roundtrip() -> None:
    out = normalize(np.full((160, 160, 3), 255, np.uint8), SPEC)
    assert np.allclose(out, 1.0)
    spec = PreprocessSpec(size=128, background=(0, 0, 0), mean=(0.4, 0.5, 0.6))
    assert PreprocessSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="preprocessing"):
        PreprocessSpec.from_json(json.dumps({**json.loads(spec.to_json()), "version": "other"}))
    assert from_pixels(np.zeros((4, 4, 3), np.uint8), spec).shape == (3, 128, 128)


def test_normalization_is_the_formula_exactly_channels_first() -> None:
    spec = PreprocessSpec(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    rng = np.random.default_rng(3)
    fitted = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    fitted[0, 0, :, 0] = np.arange(7)  # a few exact levels, and 255 below
    fitted[1, 4, 6] = 255
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    formula = np.moveaxis((fitted.astype(np.float32) / 255.0 - mean) / std, -1, -3)
    out = normalize(fitted, spec)
    assert out.shape == (2, 3, 5, 7) and out.dtype == np.float32 and out.flags.c_contiguous
    assert np.array_equal(out, formula)  # bit-equal: the lookup holds the formula's values


def test_an_offset_moves_the_placed_sprite_by_whole_pixels() -> None:
    pixels = sprite(np.random.default_rng(4), 16)[..., :3].copy()  # 10x: 160, fills the canvas
    small = pixels[:5, :7]  # 22x: 110 x 154, centred with a margin
    for source in (pixels, small):
        centred = fit(source, SPEC)
        for dx, dy in [(3, -2), (-20, 9), (0, 0)]:
            moved = fit(source, SPEC, (dx, dy))
            expected = np.full_like(centred, 255)
            h, w = 160 - abs(dy), 160 - abs(dx)
            expected[max(dy, 0) : max(dy, 0) + h, max(dx, 0) : max(dx, 0) + w] = centred[
                max(-dy, 0) : max(-dy, 0) + h, max(-dx, 0) : max(-dx, 0) + w
            ]
            assert np.array_equal(moved, expected), (source.shape, dx, dy)
    assert (fit(pixels, SPEC, (170, 0)) == 255).all()  # wholly off the canvas: background


def test_preprocessing_needs_no_torch() -> None:
    code = "import sys, spritesafe.preprocess; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
