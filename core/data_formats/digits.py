"""The ``digits`` format: scikit-learn's embedded digits, the default data set (nothing to download)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from poisonlens.data_formats import register

if TYPE_CHECKING:  # numpy and scikit-learn load when the data set does, not for --help
    from poisonlens.data.image_dataset import ImageDataset


@register("digits", doc="scikit-learn's 1,797 8x8 grey digits, 10 classes (the default)")
def load_digits_format(arg: str = "", *, name: str = "digits") -> ImageDataset:
    """The ``digits`` spec's loader (it takes no argument): :func:`load_digits_dataset`.

    Parameters
    ----------
    arg : str
        Always '' (the spec has no colon).
    name : str
        The spec, ``digits``.
    """
    return load_digits_dataset()


def load_digits_dataset(*, test_size: float = 0.25, random_state: int = 0) -> ImageDataset:
    """scikit-learn's ``load_digits`` (1,797 8x8 images) with a fixed, seeded, stratified split.

    Pixel values 0..16 are rescaled to 0..255 uint8; shape (n, 8, 8, 1).

    Parameters
    ----------
    test_size : float
        Share of each class held out as the test split.
    random_state : int
        Seed of the split.
    """
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from poisonlens.data.image_dataset import ImageDataset

    bunch = load_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=random_state
    )
    return ImageDataset(x_tr, y_tr, x_te, y_te, tuple(str(c) for c in range(10)), "digits")
