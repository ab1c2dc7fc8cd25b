"""Instructor report after a batch: one HTML page with score distributions per task and per
written question, the tests failed most often (with their messages), and the submissions that
could not be graded normally."""
import html
from collections import Counter

from . import notebook
from .batch import Record
from .course import Course
from .grading import cell_scores
from .notebook import task_of


def failure_messages(course, student, assignment=None):
    """{grade_id: first line of the error} for the failed graded cells of one autograded notebook."""
    path = Course.of(course).notebook("autograded", student, assignment)
    if not path.exists():
        return {}
    messages = {}
    for cell in notebook.read(path).cells:
        for output in cell.get("outputs", []):
            if output.output_type == "error" and notebook.meta(cell).get("grade"):
                messages[notebook.meta(cell)["grade_id"]] = f"{output.ename}: {output.evalue}".splitlines()[0][:300]
            elif output.output_type == "stream" and output.name == "stderr" and notebook.meta(cell).get("grade"):
                messages.setdefault(notebook.meta(cell)["grade_id"], "wrote to stderr: " + output.text[:200])
    return messages


def distributions(groups):
    """Histograms of points as HTML bars (one bar per whole point), one panel per group:
    {name: (scores, max_points)}."""
    panels = []
    for name, (scores, top) in groups.items():
        counts = Counter(int(score + 0.5) for score in scores)
        most = max(counts.values(), default=1)
        rows = "".join(f'<tr><td>{points}</td><td><div class="bar" style="width:{160 * counts[points] / most:.0f}px">'
                       f'</div></td><td>{counts[points]}</td></tr>' for points in range(int(top) + 1))
        panels.append(f'<div class="histogram"><b>{html.escape(name)}</b> (max {top:g})'
                      f'<table><tr><th>points</th><th></th><th>students</th></tr>{rows}</table></div>')
    return f'<div class="panels">{"".join(panels)}</div>'


def table(header, rows):
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(course, assignment=None):
    course = Course.of(course)
    assignment = assignment or course.assignment
    scores = cell_scores(course, assignment)
    students = sorted(scores)
    if not students:
        raise ValueError("the gradebook has no graded submission yet: run the batch first")
    manual = sorted({g for s in scores.values() for g, v in s.items() if v[2] or "_why_" in g})
    auto = sorted({g for s in scores.values() for g in s} - set(manual))
    tasks = sorted({task_of(g) for g in auto})
    per_task = {t: ([sum(scores[s][g][0] for g in auto if task_of(g) == t and g in scores[s]) for s in students],
                    sum(scores[students[0]][g][1] for g in auto if task_of(g) == t)) for t in tasks}
    graded_answers = {g: ([scores[s][g][0] for s in students if not scores[s][g][2]], scores[students[0]][g][1])
                      for g in manual}

    records = [Record.load(p) for p in sorted(course.state_folder(assignment).glob("*.json"))
               if not p.name.endswith(".outcome.json")]
    records = [r for r in records if r]
    problems = [[r.student, r.reason, r.seconds] for r in records if r.reason]
    ran = [s for s in students if s not in {r.student for r in records if r.stand_in}]
    messages = {s: failure_messages(course, s, assignment) for s in ran}
    failures = Counter(g for s in ran for g in auto if scores[s][g][0] < scores[s][g][1])
    failed_rows = []
    for gid, count in failures.most_common():
        common = Counter(messages[s].get(gid, "(no message)") for s in ran
                         if scores[s][gid][0] < scores[s][gid][1]).most_common(3)
        failed_rows.append([gid, f"{count}/{len(ran)}", " | ".join(f"{n}x {m}" for m, n in common)])
    auto_totals = [sum(scores[s][g][0] for g in auto if g in scores[s]) for s in students]
    waiting = sum(1 for s in students for g in manual if scores[s].get(g, (0, 0, False))[2])

    page = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>{assignment}: grading report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:13px;vertical-align:top}}
.panels{{display:flex;flex-wrap:wrap;gap:1.5em}} .histogram td,.histogram th{{border:none;padding:1px 4px}}
.bar{{background:#4c72b0;height:12px}}</style></head><body>
<h1>{assignment}: grading report</h1>
<p>{len(students)} submissions. Autograded points: mean {sum(auto_totals) / len(students):.1f},
min {min(auto_totals):g}, max {max(auto_totals):g} of {sum(m for _, m in per_task.values()):g}.
Written answers waiting for a grader: {waiting}.</p>
<h2>Autograded points per task</h2>{distributions(per_task)}
<h2>Written questions (graded so far)</h2>{distributions(graded_answers)}
<h2>Tests failed most often</h2>
<p>Among the {len(ran)} submissions that ran (the others are listed below).</p>{table(["test", "failed", "most common messages"], failed_rows)}
<h2>Submissions that errored or timed out</h2>
{table(["student", "reason", "seconds"], problems) if problems else "<p>None.</p>"}
</body></html>"""
    out = course.root / "reports" / f"{assignment}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out
