"""Shared fixtures. Grading is slow (about 40 s per notebook), so every fixture notebook is
graded once per session, in a fresh copy of the course with its own gradebook."""
import os
import shutil
from pathlib import Path

import pytest

from nncourse import data, grading, notebook
from nncourse.samples import STUDENTS

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "source" / grading.ASSIGNMENT / f"{grading.NOTEBOOK}.ipynb"
RELEASE = grading.release_path(REPO)
SEED = Path(__file__).resolve().parent / "seed" / "tutorial3_seed.ipynb.json"
DATA_DIR = REPO / "data" / "mnist"


@pytest.fixture(scope="session")
def source_nb():
    return notebook.read(SOURCE)


@pytest.fixture(scope="session")
def course(tmp_path_factory):
    """A fresh course folder (config, tooling, source) with an empty gradebook and a new release."""
    root = tmp_path_factory.mktemp("course")
    shutil.copy(REPO / "nbgrader_config.py", root)
    for folder in ("source", "nncourse"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "gradebook").mkdir()
    data.provision(DATA_DIR)
    os.environ["MNIST_DIR"] = str(DATA_DIR)  # grading kernels inherit it
    grading.generate_release(root)
    return root


@pytest.fixture(scope="session")
def graded(course):
    """Gradebook scores after autograding the source, the blank release and every sample student."""
    notebook.write(notebook.read(SOURCE), grading.submission_path(course, "solution"))
    notebook.write(notebook.read(grading.release_path(course)), grading.submission_path(course, "blank"))
    grading.write_samples(course, STUDENTS)
    grading.autograde(course)
    grading.generate_feedback(course)
    return grading.cell_scores(course)
