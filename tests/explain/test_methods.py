"""Heatmap methods by name: layers after @, names for people and for files, clear errors."""

from __future__ import annotations

import pytest

from skin_tf.explain.methods import METHODS, method_slug, method_title, parse_method


def test_a_bare_name_reads_the_last_conv_and_layers_follow_the_at_sign():
    assert parse_method("gradcam") == ("gradcam", ("top",))
    assert parse_method("layercam@block5+top") == ("layercam", ("block5", "top"))
    assert set(METHODS) == {"gradcam", "gradcam++", "scorecam", "layercam", "rise"}


def test_rise_reads_no_layer():
    assert parse_method("rise") == ("rise", ()) and method_title("rise") == "RISE"
    with pytest.raises(ValueError, match="reads no layer"):
        parse_method("rise@block5")


@pytest.mark.parametrize("bad", ["lime", "gradcam@", "gradcam@+", "GradCAM"])
def test_unknown_methods_and_empty_layer_lists_are_named(bad):
    with pytest.raises(ValueError, match="gradcam"):
        parse_method(bad)


def test_titles_and_slugs_keep_the_old_gallery_names():
    assert method_title("scorecam") == "Score-CAM"
    assert method_title("layercam@block5+top") == "LayerCAM on block5+top"
    # The gallery's file names of the three original methods stay as they were.
    assert [method_slug(m) for m in ("gradcam", "gradcam++", "scorecam")] == [
        "gradcam",
        "gradcampp",
        "scorecam",
    ]
    assert method_slug("gradcam++@block5+top") == "gradcampp_block5-top"
