"""Datasets that the operating system's packages install, read offline: Debian's `dataset-fashion-mnist`
(`apt-get install dataset-fashion-mnist`) puts the four idx files of Fashion-MNIST (Xiao, Rasul &
Vollgraf 2017: 60,000 + 10,000 28x28 grayscale images of clothes, 10 classes) in
/usr/share/datasets/fashion-mnist/.

Debian recompressed the .gz files, so their checksums are not upstream's; what is checked is the
content read: the sha256 of each decompressed file, pinned here from the package (version
0.0~git20200523.55506a9-1), which also holds its idx header (magic number, counts, 28x28). A file
that differs is refused by name, before anything is trained.
"""

import gzip
import hashlib
from pathlib import Path

import numpy as np

# name -> the folder its package installs
FOLDERS = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}
# name -> (train images, train labels, test images, test labels): file name, sha256 of its decompressed bytes
FILES = {
    "fashion_mnist": [
        ("train-images-idx3-ubyte.gz", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        ("train-labels-idx1-ubyte.gz", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        ("t10k-images-idx3-ubyte.gz", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        ("t10k-labels-idx1-ubyte.gz", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    ],
}
PACKAGES = {"fashion_mnist": "dataset-fashion-mnist"}


class DatasetCorrupt(ValueError):
    """A file of an installed dataset package is not the one the package ships."""


def idx_array(raw: bytes) -> np.ndarray:
    """The array of an idx file (LeCun's MNIST format): 2 zero bytes, a type byte (0x08: uint8), the
    number of dimensions, each dimension as a big-endian uint32, then the data."""
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError("not an idx file of unsigned bytes")
    dims = np.frombuffer(raw, dtype=">u4", count=raw[3], offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * raw[3]).reshape(dims).copy()


def packaged(name: str) -> tuple[np.ndarray, ...] | None:
    """(train images (N, 1, H, W), test images, train labels, test labels) of dataset `name` from its
    package's folder; None where the package is not installed (no such folder). DatasetCorrupt names
    the file whose content differs from the package's, and how to reinstall it."""
    folder = FOLDERS.get(name)
    if folder is None or not folder.is_dir():
        return None
    arrays = []
    for file, sha256 in FILES[name]:
        path = folder / file
        try:
            raw = gzip.decompress(path.read_bytes())
        except (OSError, EOFError, gzip.BadGzipFile) as err:
            raise DatasetCorrupt(f"{path} cannot be read ({type(err).__name__}: {err}); reinstall it: "
                                 f"apt-get install --reinstall {PACKAGES[name]}") from err
        found = hashlib.sha256(raw).hexdigest()
        if found != sha256:
            raise DatasetCorrupt(f"{path} is not the file {PACKAGES[name]} ships: the sha256 of its content is "
                                 f"{found}, expected {sha256}; reinstall it: apt-get install --reinstall "
                                 f"{PACKAGES[name]}")
        arrays.append(idx_array(raw))
    train_x, train_y, test_x, test_y = arrays
    return train_x[:, None], test_x[:, None], train_y.astype(np.int64), test_y.astype(np.int64)
