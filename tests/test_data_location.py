"""Where the release looks for MNIST: its read-only data cell run on folders laid out as students
have them. A folder counts only when it holds the four files."""
import pytest

from nncourse import notebook
from nncourse.assignments.tutorial3.data import OFFICIAL_MD5, raw_dir

from conftest import DATA_DIR, RELEASE

DATA_CELL = notebook.cells_by_id(notebook.read(RELEASE))["data_location"].source


def mnist(folder, files=tuple(OFFICIAL_MD5)):
    """`folder` laid out as an MNIST folder holding `files` (links to the real ones)."""
    raw = raw_dir(folder)
    raw.mkdir(parents=True)
    for name in files:
        (raw / name).symlink_to(raw_dir(DATA_DIR) / name)
    return folder


@pytest.fixture
def student(tmp_path, monkeypatch):
    """A student's notebook folder, course/release/tutorial3, run from; nothing set."""
    folder = tmp_path / "course" / "release" / "tutorial3"
    folder.mkdir(parents=True)
    monkeypatch.chdir(folder)
    for name in ("MNIST_DIR", "NBGRADER_EXECUTION"):
        monkeypatch.delenv(name, raising=False)
    return folder


def data_dir(my_mnist_dir=None):
    namespace = {} if my_mnist_dir is None else {"my_mnist_dir": str(my_mnist_dir)}
    exec(DATA_CELL, namespace)
    return namespace["data_dir"]


def test_an_empty_folder_left_by_a_failed_download_does_not_hide_the_course_data(student, capsys):
    raw_dir(student / "data" / "mnist").mkdir(parents=True)  # what a failed offline download leaves
    course_data = mnist(student.parent.parent / "data" / "mnist")
    assert data_dir() == str(course_data)


def test_a_partial_folder_does_not_count_and_the_message_names_what_is_missing(student, capsys):
    partial = mnist(student / "mine", files=["train-images-idx3-ubyte", "train-labels-idx1-ubyte"])
    assert data_dir(partial) == str(student / "data" / "mnist")  # where an online run downloads it
    message = capsys.readouterr().err
    assert "my_mnist_dir is" in message and "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte" in message
    assert str(student / "data" / "mnist") in message and "run these cells again" in message


def test_the_nearest_data_folder_above_the_notebook_is_found(student):
    far = mnist(student.parent.parent.parent / "data" / "mnist")
    assert data_dir() == str(far)
    near = mnist(student.parent / "data" / "mnist")
    assert data_dir() == str(near)


def test_mnist_dir_is_used_when_it_holds_the_files_and_reported_when_not(student, monkeypatch, capsys):
    elsewhere = mnist(student.parent.parent / "elsewhere")
    monkeypatch.setenv("MNIST_DIR", str(elsewhere))
    assert data_dir() == str(elsewhere)
    monkeypatch.setenv("MNIST_DIR", str(student / "empty"))
    assert data_dir() == str(student / "data" / "mnist")
    assert "MNIST_DIR is" in capsys.readouterr().err


def test_the_editable_line_wins_and_graders_ignore_it(student, monkeypatch):
    mine, graders = mnist(student / "mine"), mnist(student / "graders")
    monkeypatch.setenv("MNIST_DIR", str(graders))
    assert data_dir(mine) == str(mine)  # no restart needed: the cells are run again
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert data_dir(mine) == str(graders)


def test_the_release_has_the_editable_line_before_the_data_cell():
    release = notebook.read(RELEASE)
    at = next(i for i, c in enumerate(release.cells) if notebook.meta(c).get("grade_id") == "data_location")
    editable = release.cells[at - 1]
    assert notebook.role(editable) is None and 'my_mnist_dir = ""' in editable.source
