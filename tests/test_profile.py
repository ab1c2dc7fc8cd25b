"""The grading profile: in grading runs, the locked training cells evaluate the test set less often."""
import copy

import pytest
from traitlets.config import Config

from nncourse import notebook
from nncourse.assignments.tutorial3 import checks
from nncourse.profile import GradingProfile, set_keyword

from conftest import RELEASE, SOURCE

RESOURCES = {"nbgrader": {"assignment": "tutorial3"}}
ASSIGNMENTS = {"tutorial3": checks.__name__}


def profiled(nb, test_every):
    config = Config({"AssignmentStep": {"assignments": ASSIGNMENTS}, "GradingProfile": {"test_every": test_every}})
    return GradingProfile(config=config).preprocess(copy.deepcopy(nb), RESOURCES)[0]


def training_sources(nb):
    return {g: c.source for g, c in notebook.cells_by_id(nb).items() if g in checks.TRAINING_CELLS}


def test_keyword_literal_is_replaced_in_place():
    source = "run(net,\n    batch=40,\n    every=10)  # keep\n"
    assert set_keyword(source, "every", 100) == ("run(net,\n    batch=40,\n    every=100)  # keep\n", 10)


@pytest.mark.parametrize("source", ["run(every=n)", "run(x)", "run(every=1)\nrun(every=2)"])
def test_keyword_that_is_not_one_integer_literal_is_refused(source):
    with pytest.raises(ValueError, match="expected one `every=<integer>`"):
        set_keyword(source, "every", 100)


def test_profile_changes_only_the_training_cells_and_says_so_in_each():
    nb = notebook.read(RELEASE)
    out = profiled(nb, 100)
    before, after = training_sources(nb), training_sources(out)
    assert len(after) == 4
    for grade_id, source in after.items():
        assert "iters_per_test=10)" in before[grade_id]
        assert source.splitlines()[0].startswith("# Grading run: the test set was evaluated every 100 iterations")
        assert source.split("\n", 1)[1] == before[grade_id].replace("iters_per_test=10)", "iters_per_test=100)")
    others = [c.source for c in out.cells if notebook.meta(c).get("grade_id") not in checks.TRAINING_CELLS]
    assert others == [c.source for c in nb.cells if notebook.meta(c).get("grade_id") not in checks.TRAINING_CELLS]


def test_profile_off_leaves_the_notebook_alone():
    nb = notebook.read(SOURCE)
    assert profiled(nb, 0) == nb


def test_a_training_cell_the_profile_cannot_change_stops_grading_with_the_fix():
    nb = notebook.read(SOURCE)
    notebook.cells_by_id(nb)["task3_train"].source = "train_everything()"
    with pytest.raises(ValueError, match="'task3_train' cannot be changed.*test_every = 0"):
        profiled(nb, 100)


def test_the_course_grades_with_the_profile():
    from nncourse import batch
    from nncourse.course import Course
    from conftest import REPO
    config = Course.load(REPO).config
    assert GradingProfile in batch.autograde_steps(config, "sanitize_preprocessors")
    assert config.GradingProfile.test_every == 100
