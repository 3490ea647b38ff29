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


def test_preprocessing_needs_no_torch() -> None:
    code = "import sys, spritesafe.preprocess; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
