"""HAM10000 on disk and in tf.data: the index of images, lesion-grouped splits, downloads, the
TFDS builder, and the one preprocessing pipeline (decode → resize → cache → augment → batch).

The bottom of the package above the run-directory contract: nothing here knows about models,
training or evaluation.

    >>> from skin_tf.data import CLASSES, split_by_lesion
    >>> CLASSES
    ('akiec', 'bcc', 'bkl', 'df', 'mel', 'nv', 'vasc')

Names load lazily: importing this package does not import TensorFlow.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "ham10000": [
            "CLASSES",
            "CLASS_NAMES",
            "MEL_INDEX",
            "DataError",
            "read_metadata",
            "resolve_data_root",
        ],
        "splits": [
            "split_by_lesion",
            "split_table",
            "lesion_subset",
            "read_splits",
            "write_splits",
        ],
        "pipeline": ["make_dataset", "load_image", "decode_resize", "class_weights"],
        "augment": ["AugmentConfig", "augment_batch"],
        "shifts": ["BENIGN_FAMILIES", "shift_image", "shifted"],
        "sizes": ["image_hw"],
        "images": ["ImageError", "prepare_image", "read_rgb_image"],
        "download": ["download_ham10000"],
        "isic2018": ["read_isic2018_test"],
        "tfds_ham10000": ["prepare_ham10000", "load_split"],
    },
)
