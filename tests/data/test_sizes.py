"""Tests of skin_tf.data.sizes: one reading of an image size, a side or (height, width)."""

from __future__ import annotations

import pytest

from skin_tf.data.sizes import image_hw, is_square, size_label


def test_a_side_and_a_pair_read_as_height_and_width():
    assert image_hw(128) == (128, 128)
    assert image_hw([150, 200]) == (150, 200) and image_hw((150, 200)) == (150, 200)
    assert is_square(64) and is_square([64, 64]) and not is_square([150, 200])
    assert size_label(128) == "128" and size_label([150, 200]) == "150×200"


@pytest.mark.parametrize("bad", [0, -3, [150], [150, 200, 3], [150.5, 200], True, "128"])
def test_what_is_not_a_size_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match="positive side or \\[height, width\\]"):
        image_hw(bad)
