"""The course as it runs on a shared server: nbgrader's exchange between real Unix accounts
(release, fetch, submit, collect, grade, late penalty, feedback), and `nbgrader zip_collect` on a
Canvas download. docs/course-server.md walks through the same commands."""
import datetime
import io
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook
from nbgrader.utils import notebook_hash

from nncourse import grading, notebook
from nncourse.assignments.tutorial3 import data
from nncourse.assignments.tutorial3.samples import BY_NAME
from nncourse.course import Course
from nncourse.sandbox import bind_with_parents

from conftest import DATA_DIR, REPO, make_course

VENV_BIN = Path(sys.executable).parent  # .venv/bin, not resolved: its python links into the base install
BASE_PYTHON = Path(sys.base_prefix).resolve()  # here /root/.pyenv/versions/3.11.7
COURSE_ID, ASSIGNMENT = "nn-tutorial3", "tutorial3"
SAMPLES = {"a": "correct", "b": "numpy_relu_mask_missing", "c": "style_type_hints"}  # c submits late; b's bug needs no retraining
AUTOGRADED_MAX = 42


def run_as(account, *cmd, cwd=None, check=True):
    """Run `cmd` as `account` (a pwd entry), with a clean environment of its own.

    The venv's Python links into /root/.pyenv, and /root is mode 0700: other uids cannot run it, and
    its permissions must stay as they are. So, as root, bubblewrap gives the command a mount namespace
    (no user namespace) holding the host's whole filesystem in place (`--dev-bind / /`: the same files,
    owners and modes, devices usable (a plain --bind is nodev: no /dev/urandom); writes land on the host), except /root, which is an empty 0755 tmpfs with only
    the base Python bound into it read-only (in 0755 parent folders). The host's /proc stays as it is: a fresh `--proc` would
    come with bubblewrap's read-only overmounts in it, and then the grader's own bwrap, run by this
    user in a user namespace, may not mount a proc ("Can't mount proc: Operation not permitted").
    setpriv then switches to the user's uid, gid and groups, which clears every capability."""
    env = {"HOME": account.pw_dir, "USER": account.pw_name, "LOGNAME": account.pw_name, "LANG": "C.UTF-8",
           "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin"}
    wrapper = ["bwrap", "--die-with-parent", "--dev-bind", "/", "/"]
    if Path("/root") in BASE_PYTHON.parents:
        wrapper += ["--perms", "0755", "--tmpfs", "/root"]
        bind_with_parents(wrapper, BASE_PYTHON)  # its parents as 0755 folders, then a read-only bind
    wrapper += ["--chdir", str(cwd or account.pw_dir), "--",
                "setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups", "--"]
    result = subprocess.run(wrapper + [str(c) for c in cmd], env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} as {account.pw_name} failed ({result.returncode}):\n"
                             f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return result


def nbgrader_as(account, *args, cwd=None):
    return run_as(account, VENV_BIN / "nbgrader", *args, cwd=cwd)


def python_as(account, code, *args, cwd=None):
    return run_as(account, VENV_BIN / "python", "-c", code, *args, cwd=cwd)


# Run by a student: fill the fetched notebook in as the named sample student would.
FILL = """import sys
from nncourse import notebook
from nncourse.assignments.tutorial3.samples import BY_NAME
path = "tutorial3/tutorial3.ipynb"
notebook.write(BY_NAME[sys.argv[1]].notebook(notebook.read(path)), path)
"""

# Run by a student: try to list each folder or read each file named; print what happened to each.
ATTACK = """import json, os, sys
result = {}
for target in sys.argv[1:]:
    try:
        os.listdir(target) if os.path.isdir(target) else open(target, "rb").read(1)
        result[target] = "read"
    except OSError as err:
        result[target] = type(err).__name__
print(json.dumps(result))
"""


def attack(account, *targets):
    """{target: "read" or the error's name}, as `account` saw it. Each target really exists."""
    for target in targets:
        assert os.path.lexists(target), target
    return json.loads(python_as(account, ATTACK, *targets).stdout)


def owner_and_mode(path):
    st = os.stat(path)
    return pwd.getpwuid(st.st_uid).pw_name, stat.S_IMODE(st.st_mode)


@pytest.fixture
def accounts():
    """An instructor (t) and three students (a, b, c): Unix accounts with unique names and homes
    (mode 0700) in a temporary folder, removed afterwards with userdel -r, whatever happened."""
    work = Path(tempfile.mkdtemp(prefix="nncourse-exchange-"))
    os.chmod(work, 0o755)  # pytest's own tmp folders are 0700 to everyone but root
    (work / "home").mkdir()
    suffix, made = secrets.token_hex(3), []
    try:
        for role in "tabc":
            name = f"nnc{suffix}-{role}"
            subprocess.run(["useradd", "--create-home", "--home-dir", str(work / "home" / name), "--user-group",
                            "--shell", "/bin/sh", name], check=True, capture_output=True)
            made.append(name)
            os.chmod(work / "home" / name, 0o700)
        yield work, {name[-1]: pwd.getpwnam(name) for name in made}
    finally:
        for name in made:
            subprocess.run(["userdel", "--remove", "--force", name], capture_output=True)
            assert subprocess.run(["getent", "passwd", name], capture_output=True).returncode == 2, name
        shutil.rmtree(work)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="creates Unix accounts (useradd) and runs commands as them: run as root")
@pytest.mark.skipif(shutil.which("bwrap") is None or shutil.which("setpriv") is None,
                    reason="needs bubblewrap and setpriv (./setup installs them as root)")
def test_a_course_run_through_nbgrader_exchange_with_real_unix_accounts(accounts):
    work, users = accounts
    t, students = users["t"], {k: users[k] for k in "abc"}
    data.provision(DATA_DIR)

    # The exchange, as on a server: root's, world-writable with the sticky bit (nbgrader's docs).
    exchange = work / "exchange"
    exchange.mkdir()
    os.chmod(exchange, 0o1777)
    # The instructor's course folder, 0700; data/ links to the repository's MNIST.
    course = grading.new_course(work / "course", REPO, f'c.Exchange.root = "{exchange}"')
    for folder, dirs, files in os.walk(course):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            os.lchown(name, t.pw_uid, t.pw_gid)
    os.chmod(course, 0o700)
    for student in students.values():  # the students' own nbgrader configuration names the exchange
        config = Path(student.pw_dir) / ".jupyter" / "nbgrader_config.py"
        config.parent.mkdir()
        config.write_text(f'c = get_config()\nc.Exchange.root = "{exchange}"\n')
        for path in (config.parent, config):
            os.chown(path, student.pw_uid, student.pw_gid)

    # The wrapper really switches users: no capabilities left, and the host's exchange as it is.
    status = python_as(t, "print(open('/proc/self/status').read())").stdout
    assert f"Uid:\t{t.pw_uid}\t{t.pw_uid}" in status and "CapEff:\t0000000000000000" in status
    assert python_as(t, f"import os; print(oct(os.stat({str(exchange)!r}).st_mode))").stdout.strip() == "0o41777"
    # and the grader's sandbox can start as this ordinary user (unprivileged user namespaces)
    assert python_as(t, "from nncourse.sandbox import missing_pieces; print(missing_pieces(False))").stdout.strip() == "[]"

    # 1. release
    nbgrader_as(t, "generate_assignment", ASSIGNMENT, cwd=course)
    nbgrader_as(t, "release_assignment", ASSIGNMENT, cwd=course)
    course_exchange = exchange / COURSE_ID
    assert owner_and_mode(course_exchange) == (t.pw_name, 0o755)
    assert owner_and_mode(course_exchange / "outbound" / ASSIGNMENT / "tutorial3.ipynb") == (t.pw_name, 0o644)
    assert owner_and_mode(course_exchange / "inbound") == (t.pw_name, 0o2733)  # students write, cannot list

    # 2. fetch, fill in, submit; the due date falls between the second and the third submission
    release = Course.load(course).notebook("release")
    for key, student in students.items():
        home = Path(student.pw_dir)
        nbgrader_as(student, "fetch_assignment", ASSIGNMENT, "--course", COURSE_ID)
        fetched = home / ASSIGNMENT / "tutorial3.ipynb"
        assert owner_and_mode(fetched)[0] == student.pw_name
        assert notebook.read(fetched).cells == notebook.read(release).cells
        python_as(student, FILL, SAMPLES[key])
        if key == "c":
            due = datetime.datetime.now(datetime.timezone.utc)
            nbgrader_as(t, "db", "assignment", "add", ASSIGNMENT, f"--duedate={due:%Y-%m-%d %H:%M:%S.%f} UTC",
                        cwd=course)
        nbgrader_as(student, "submit", ASSIGNMENT, "--course", COURSE_ID)
    inbound = course_exchange / "inbound"
    submission = {key: next(inbound.glob(f"{s.pw_name}+{ASSIGNMENT}+*")) for key, s in students.items()}
    for key, student in students.items():
        assert owner_and_mode(submission[key] / "tutorial3.ipynb") == (student.pw_name, 0o644)

    # 3. a student tries to read another's submission and the instructor's files
    seen = attack(students["a"], inbound, course / "source" / ASSIGNMENT / "tutorial3.ipynb",
                  course / "gradebook" / "gradebook.db", course, Path(students["b"].pw_dir) / ASSIGNMENT / "tutorial3.ipynb")
    assert set(seen.values()) == {"PermissionError"}, seen
    # What protects a submission is that inbound/ cannot be listed: its folder is 0777 and its files
    # 0644 (nbgrader's design, so that the instructor can collect them), under a name no one else can
    # know: <student>+<assignment>+<timestamp to the microsecond>+<72 random bits>.
    assert attack(students["a"], submission["b"] / "tutorial3.ipynb") == {str(submission["b"] / "tutorial3.ipynb"): "read"}

    # 4. collect
    nbgrader_as(t, "collect", ASSIGNMENT, cwd=course)
    for key, student in students.items():
        collected = grading.submission_path(course, student.pw_name)
        assert owner_and_mode(collected)[0] == t.pw_name
        assert collected.read_bytes() == (Path(student.pw_dir) / ASSIGNMENT / "tutorial3.ipynb").read_bytes()

    # 5. grade, with the course's batch grader, in its sandbox, as the instructor
    graded = run_as(t, VENV_BIN / "python", "-m", "nncourse", "--course", course, "grade", cwd=course)
    assert "NOT GRADED" not in graded.stdout, graded.stdout

    # 6. scores and late penalties
    scores = grading.cell_scores(course)
    with Gradebook(Course.load(course).db_url) as gb:
        totals = {key: gb.find_submission(ASSIGNMENT, s.pw_name) for key, s in students.items()}
        late = {key: (sub.total_seconds_late, sub.late_submission_penalty, sub.score) for key, sub in totals.items()}
    for key, student in students.items():
        cells, fails = scores[student.pw_name], BY_NAME[SAMPLES[key]].fails
        auto = {g: v for g, v in cells.items() if not v[2]}
        assert sum(v[1] for v in auto.values()) == AUTOGRADED_MAX
        assert {g for g, v in auto.items() if v[0] < v[1]} == fails, (key, auto)
        assert all(auto[g][0] == 0 for g in fails)
    seconds, penalty, score = late["c"]
    assert 0 < seconds < 600 and penalty == 5.0 and score == AUTOGRADED_MAX  # one started day: 5 points
    assert late["a"] == (0, 0.0, AUTOGRADED_MAX)
    assert late["b"][:2] == (0, 0.0) and late["b"][2] < AUTOGRADED_MAX
    total = {key: score - penalty for key, (_, penalty, score) in late.items()}

    # 7. feedback
    nbgrader_as(t, "generate_feedback", ASSIGNMENT, cwd=course)
    nbgrader_as(t, "release_feedback", ASSIGNMENT, cwd=course)
    feedback_dir = course_exchange / "feedback"
    assert owner_and_mode(feedback_dir) == (t.pw_name, 0o711)  # students may not list it
    released = {}
    for key in students:  # each student's feedback is named by the hash of their submission's secret
        secret = (submission[key] / "submission_secret.txt").read_text()
        released[key] = feedback_dir / f"{notebook_hash(secret=secret, notebook_id='tutorial3')}.html"
        assert released[key].exists()

    # 8. each student fetches their own feedback, and only theirs
    for key, student in students.items():
        nbgrader_as(student, "fetch_feedback", ASSIGNMENT, "--course", COURSE_ID)
        pages = list((Path(student.pw_dir) / ASSIGNMENT / "feedback").glob("*/tutorial3.html"))
        assert len(pages) == 1, pages
        page = pages[0].read_text()
        assert owner_and_mode(pages[0])[0] == student.pw_name
        assert f"tutorial3 (Score: {total[key]} / " in page
        assert ("Late submission penalty (Score: -5.0)" in page) == (key == "c")
    assert attack(students["a"], feedback_dir) == {str(feedback_dir): "PermissionError"}


def notebook_bytes(name, release):
    return nbformat.writes(BY_NAME[name].notebook(release)).encode()


def zipped(entries):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return buffer.getvalue()


@pytest.mark.slow
def test_zip_collect_from_an_lms_download(tmp_path_factory):
    """A Canvas "Download Submissions" zip: lastfirst_[LATE_]<user id>_<file id>_<file name>."""
    course = make_course(tmp_path_factory, "zip_collect")
    release = notebook.read(grading.release_path(course))
    macos_zip = {  # a student's own zip, made on a Mac
        "tutorial3/tutorial3.ipynb": notebook_bytes("style_vectorised", release),
        "tutorial3/.ipynb_checkpoints/tutorial3-checkpoint.ipynb": nbformat.writes(release).encode(),
        "__MACOSX/tutorial3/._tutorial3.ipynb": b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X",
        "__MACOSX/._tutorial3": b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X",
    }
    entries = {  # file in the download: its content, and the student who gets it or why it is skipped
        "doejane_1001_50001_tutorial3.ipynb": ("correct", "1001"),
        "smithjohn_1002_50002_Tutorial3 (1).ipynb": ("numpy_relu_mask_missing", "1002"),
        "leeanna_LATE_1003_50003_tutorial3-final.ipynb": ("style_debug_prints", "1003"),
        "kowalskipiotr_1004_50004_tutorial3-2.ipynb": ("style_magics", "1004"),  # Canvas's resubmission suffix
        "garciamaria_1005_50005_submission.zip": (zipped(macos_zip), "an archive: its files were extracted"),
        "nguyenbao_1006_50006_notes.pdf": (b"%PDF-1.4\n%notes\n", "not a notebook of the assignment"),
        "nguyenbao_1006_50007_tutorial3.ipynb": ("constant_batch", "1006"),
        "wangwei_1008_50009_tutorial3.ipynb": ("style_help", "1008"),
        "wangwei_1008_50010_Untitled.ipynb": (nbformat.writes(nbformat.v4.new_notebook()).encode(),
                                              "not a notebook of the assignment (tutorial3.ipynb was taken)"),
        "brownalex_1007_50008_tutorial3.html": (b"<html>exported</html>", "student 1007 sent no notebook"),
    }
    contents = {name: notebook_bytes(c, release) if isinstance(c, str) else c for name, (c, _) in entries.items()}
    archive = course / "downloaded" / ASSIGNMENT / "archive"
    archive.mkdir(parents=True)
    (archive / "submissions.zip").write_bytes(zipped(contents))

    log = grading.nbgrader(course, "zip_collect", ASSIGNMENT).stderr

    # every extracted file is either collected for its student or skipped with its reason in the log
    inner = "submissions/garciamaria_1005_50005_submission/"
    expected = {f"submissions/{name}": (contents[name], outcome) for name, (_, outcome) in entries.items()}
    expected.update({
        inner + "tutorial3/tutorial3.ipynb": (macos_zip["tutorial3/tutorial3.ipynb"], "1005"),
        inner + "tutorial3/.ipynb_checkpoints/tutorial3-checkpoint.ipynb": (None, "Jupyter checkpoint copy"),
        inner + "__MACOSX/tutorial3/._tutorial3.ipynb": (None, "macOS archive metadata"),
        inner + "__MACOSX/._tutorial3": (None, "macOS archive metadata"),
    })
    extracted = course / "downloaded" / ASSIGNMENT / "extracted"
    assert {str(p.relative_to(extracted)) for p in extracted.rglob("*") if p.is_file()} == set(expected)
    collected = {}
    for name, (content, outcome) in expected.items():
        if outcome.isdigit():
            collected[outcome] = content
            assert f"skipped {name}:" not in log
            assert (f"taking {name} as tutorial3.ipynb" in log) == (not name.endswith("/tutorial3.ipynb")
                                                                    and not name.endswith("_tutorial3.ipynb"))
        else:
            assert f"skipped {name}: {outcome}" in log, (name, log)
    submitted = course / "submitted"
    assert {p.name for p in submitted.iterdir()} == set(collected)
    for student, content in collected.items():
        assert [p.name for p in (submitted / student / ASSIGNMENT).iterdir()] == ["tutorial3.ipynb"]
        assert grading.submission_path(course, student).read_bytes() == content
    assert f"{len(collected)} files collected, {len(expected) - len(collected)} files skipped" in log

    # grade two of them: the renamed one with a bug, and the one from the Mac zip
    subprocess.run([sys.executable, "-m", "nncourse", "--course", str(course), "grade", "1002", "1005"],
                   check=True, capture_output=True, text=True)
    scores = grading.cell_scores(course)
    for student, sample in {"1002": "numpy_relu_mask_missing", "1005": "style_vectorised"}.items():
        auto = {g: v for g, v in scores[student].items() if not v[2]}
        assert {g for g, v in auto.items() if v[0] < v[1]} == BY_NAME[sample].fails
        assert sum(v[0] for v in auto.values()) == AUTOGRADED_MAX - sum(auto[g][1] for g in BY_NAME[sample].fails)
