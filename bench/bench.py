"""Benchmark of the batch grader, measured side by side in one run on this machine.

- floor: the reference solution as a plain Python script (no notebook, no grading), with the
  course's grading profile, in the environment our grader gives a kernel that has the machine to
  itself (threads, allocator), and with the threads each kernel of the batch gets (a bound on
  the batch's throughput);
- one submission graded by `python -m nncourse grade` (autograde and report), run in turn with the
  floor script (--single-runs times each; overhead_vs_floor is the ratio of their medians), after
  one run of each that is printed but not counted (--warm-up): a course's first grading finds no
  kernel template recipe to start early, a cost paid once per course. Each later grading takes over
  the kernel template that the one before left up (keep_template_seconds, the course's default);
- the same with no template kept (keep_template_seconds = 0: as the first grading after the kept
  template ended), --cold-runs times in turn with the floor script, printed beside it;
- a batch of submissions graded by vanilla sequential `nbgrader autograde` (nbgrader's own steps
  and kernel manager, glibc malloc, default threads, the unchanged notebook), with the course's
  two verdict steps added so that its gradebook can be compared; and by our command, with the
  course's configuration (its grading profile included). The two gradebooks are compared cell by cell.

With --breakdown, the median seconds per submission of each phase of our batch (from the records
in .batch/): kernel start, the instructor's read-only cells (imports, loading and preprocessing
MNIST, training), the student's cells, the test cells, the verdicts, restoring cells, autograde.

The last line is: overhead_vs_floor=X throughput_vs_nbgrader=Y workers=W.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nncourse import grading, kernel_env, notebook  # noqa: E402
from nncourse.assignments.tutorial3 import data  # noqa: E402
from nncourse.batch import Record  # noqa: E402
from nncourse.course import Course  # noqa: E402
from nncourse.profile import GradingProfile, ensure_prepared  # noqa: E402
from nncourse.assignments.tutorial3.samples import STUDENTS  # noqa: E402

DATA_DIR = REPO / "data" / "mnist"
GRADER_VARIABLES = ["LD_PRELOAD", "MALLOC_CONF", *kernel_env.THREAD_VARIABLES]
# nbgrader's own steps and settings, plus the course's probes and verdicts, so that its gradebook
# can be compared with ours; no grading profile.
VANILLA_CONFIG = """c = get_config()
c.CourseDirectory.course_id = "nn-tutorial3"
c.CourseDirectory.db_url = "sqlite:///{root}/gradebook/gradebook.db"
c.Execute.timeout = 600
c.SandboxedKernelManager.data_variable = "MNIST_DIR"  # how the verdict steps' retraining kernel finds MNIST
from nbgrader.converters import Autograde
from nbgrader.preprocessors import Execute
from nncourse.verdicts import DecideVerdicts, InsertProbes
c.AssignmentStep.assignments = {assignments!r}
sanitize = Autograde.class_traits()["sanitize_preprocessors"].default()
c.Autograde.sanitize_preprocessors = sanitize[:-1] + [InsertProbes] + sanitize[-1:]
c.Autograde.autograde_preprocessors = [step for default in Autograde.class_traits()["autograde_preprocessors"].default()
                                       for step in ([default, DecideVerdicts] if default is Execute else [default])]
"""


def timed(cmd, cwd, env):
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"benchmark step failed: {' '.join(map(str, cmd))}\n{result.stderr[-2000:]}")
    return seconds, result.stdout


def default_env():
    env = {k: v for k, v in os.environ.items() if k not in GRADER_VARIABLES}
    env["MNIST_DIR"] = str(DATA_DIR)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def floor_script(path):
    """The source notebook's own code (the full solution) as a script, with the course's grading
    profile: no tests, no grader."""
    course = Course.load(REPO)
    resources = {"nbgrader": {"assignment": course.assignment}}
    nb = GradingProfile(config=course.config).preprocess(notebook.read(course.notebook("source")), resources)[0]
    ensure_prepared(nb, DATA_DIR)  # as the grader does before a kernel starts
    cells = [c.source for c in nb.cells
             if c.cell_type == "code" and notebook.role(c) != "test" and notebook.meta(c).get("grade_id") != "grader_setup"]
    code = "\n\n".join(re.sub(r"^%.*$", "", source, flags=re.M) for source in cells)
    path.write_text("import matplotlib\nmatplotlib.use('Agg')\n" + code + "\n")
    return path


def make_course(root, students):
    grading.new_course(root, REPO)
    grading.generate_release(root)
    grading.write_samples(root, students)
    return root


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="submissions in the batch (default 8)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--scaling", action="store_true", help="also grade the batch with one worker")
    parser.add_argument("--breakdown", action="store_true", help="print where a submission's time goes")
    parser.add_argument("--single-runs", type=int, default=5,
                        help="runs of the floor script and of the one-submission grading, in turn; the ratio "
                             "of their medians counts (default 5)")
    parser.add_argument("--cold-runs", type=int, default=3,
                        help="runs of the one-submission grading with no template kept, each after a floor "
                             "run, after one that saves its template recipe (default 3; 0: none)")
    parser.add_argument("--warm-up", type=int, default=1,
                        help="runs of each before those, printed but not counted: the course's first grading "
                             "has no kernel template recipe to start early yet (default 1)")
    args = parser.parse_args()
    data.provision(DATA_DIR, log=lambda *_: None)
    cores = len(os.sched_getaffinity(0))
    students = (STUDENTS * (args.batch // len(STUDENTS) + 1))[:args.batch]
    if len({s.name for s in students}) < len(students):
        sys.exit(f"at most {len(STUDENTS)} distinct sample students")
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="nncourse-bench-") as tmp:
        tmp = Path(tmp)
        print(f"machine: {cores} cores; jemalloc: {kernel_env.jemalloc_path() or 'not installed'}; "
              f"batch of {len(students)}; workers {args.workers}", flush=True)

        env = kernel_env.kernel_environment(default_env(), threads=cores)
        env["MPLBACKEND"] = "Agg"
        script = floor_script(tmp / "floor.py")
        one = make_course(tmp / "one", students[:1])
        floors, singles = [], []
        for _ in range(args.warm_up + args.single_runs):  # side by side, in turn: the drift touches both alike
            floors.append(timed([python, script], tmp, env)[0])
            singles.append(timed([python, "-m", "nncourse", "--course", str(one), "grade", "--force"], one,
                                 default_env())[0])
        if args.warm_up:
            print(f"warm-up, not counted: floor {', '.join(f'{s:.1f}' for s in floors[:args.warm_up])} s; one "
                  f"submission, the course's first grading, {', '.join(f'{s:.1f}' for s in singles[:args.warm_up])} s",
                  flush=True)
            floors, singles = floors[args.warm_up:], singles[args.warm_up:]
        floor, single = statistics.median(floors), statistics.median(singles)
        print(f"floor: reference solution as a plain script, {cores} threads, grader's allocator, median of "
              f"{len(floors)} runs ({', '.join(f'{s:.1f}' for s in floors)}): {floor:.1f} s", flush=True)
        print(f"one submission, `nncourse grade` (autograde + report), median of {len(singles)} runs, each after "
              f"a floor run, taking over the kernel template the run before kept "
              f"({', '.join(f'{s:.1f}' for s in singles)}): {single:.1f} s = {single / floor:.2f} x floor", flush=True)
        if args.cold_runs:
            cold = make_course(tmp / "cold", students[:1])
            with open(cold / "nbgrader_config.py", "a") as config:
                config.write("\nc.SandboxedKernelManager.keep_template_seconds = 0\n")
            command = [python, "-m", "nncourse", "--course", str(cold), "grade", "--force"]
            timed(command, cold, default_env())  # saves the recipe of its template, for the next to start early
            pairs = [(timed([python, script], tmp, env)[0], timed(command, cold, default_env())[0])
                     for _ in range(args.cold_runs)]
            cold_floor, cold_single = (statistics.median(p[i] for p in pairs) for i in (0, 1))
            print(f"one submission with no template kept (keep_template_seconds = 0), median of {len(pairs)} runs, "
                  f"each after a floor run ({', '.join(f'{p[1]:.1f}' for p in pairs)}): {cold_single:.1f} s = "
                  f"{cold_single / cold_floor:.2f} x those floor runs' median ({cold_floor:.1f} s)", flush=True)
        threads = max(1, cores // args.workers)  # what each of our kernels gets in the batch
        env_w = kernel_env.kernel_environment(default_env(), threads=threads)
        env_w["MPLBACKEND"] = "Agg"
        floor_w, _ = timed([python, script], tmp, env_w)
        print(f"floor with {threads} thread(s), as each of {args.workers} batch kernels gets: {floor_w:.1f} s; "
              f"so no batch of W = {args.workers} can take less than {floor_w / args.workers:.1f} s per "
              f"submission", flush=True)

        vanilla = make_course(tmp / "vanilla", students)
        course = Course.load(vanilla)
        (vanilla / "nbgrader_config.py").write_text(VANILLA_CONFIG.format(root=vanilla, assignments=course.assignments))
        sequential, _ = timed([python, "-m", "nbgrader", "autograde", course.assignment, "--force"],
                              vanilla, default_env())
        print(f"{len(students)} submissions, vanilla sequential `nbgrader autograde`, default environment: "
              f"{sequential:.1f} s ({sequential / len(students):.1f} s each)", flush=True)

        ours = make_course(tmp / "ours", students)
        parallel, _ = timed([python, "-m", "nncourse", "--course", str(ours), "grade", "--force",
                             "--workers", str(args.workers)], ours, default_env())
        print(f"{len(students)} submissions, `nncourse grade --workers {args.workers}`: {parallel:.1f} s "
              f"({parallel / len(students):.1f} s each)", flush=True)
        print(agreement(grading.cell_scores(vanilla), grading.cell_scores(ours)), flush=True)
        if args.breakdown:
            print(breakdown(Course.load(ours)), flush=True)

        if args.scaling:
            solo, _ = timed([python, "-m", "nncourse", "--course", str(ours), "grade", "--force", "--workers", "1"],
                            ours, default_env())
            print(f"{len(students)} submissions, `nncourse grade --workers 1`: {solo:.1f} s; "
                  f"speed-up with {args.workers} workers: {solo / parallel:.2f}", flush=True)

    print(f"bound on this machine (script floor with {threads} thread(s), perfect scaling over {args.workers} "
          f"kernels): {sequential / len(students) / (floor_w / args.workers):.2f} x vanilla nbgrader")
    print(f"overhead_vs_floor={single / floor:.2f} throughput_vs_nbgrader={sequential / parallel:.2f} "
          f"workers={args.workers}")


def agreement(theirs, ours):
    """Whether two gradebooks ({student: {cell: scores}}) agree cell by cell, in one line."""
    differ = sorted(f"{s}/{g}" for s in theirs | ours for g in theirs.get(s, {}) | ours.get(s, {})
                    if theirs.get(s, {}).get(g) != ours.get(s, {}).get(g))
    cells = sum(len(v) for v in ours.values())
    return (f"gradebooks agree cell by cell: {len(ours)} students, {cells} graded cells" if not differ else
            f"GRADEBOOKS DISAGREE in {len(differ)} cells: {', '.join(differ[:10])}")


def breakdown(course):
    """Median seconds per submission of each phase of the last batch, largest first."""
    paths = [p for p in course.state_folder().glob("*.json") if not p.name.endswith(".outcome.json")]
    records = [r for r in map(Record.load, paths) if r and r.phases]
    phases = {name for r in records for name in r.phases}
    medians = {name: statistics.median(r.phases.get(name, 0.0) for r in records) for name in phases}
    lines = [f"  {name:<40} {seconds:6.2f} s" for name, seconds in sorted(medians.items(), key=lambda kv: -kv[1])
             if seconds >= 0.05]
    return (f"breakdown of one submission in the batch (median of {len(records)}; the worker's own time, "
            f"{statistics.median(r.seconds for r in records):.1f} s):\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
