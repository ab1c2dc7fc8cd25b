"""The instructor report's histograms, without grading anything."""
import re

from nncourse.report import distributions


def test_histogram_counts_students_per_whole_point():
    page = distributions({"task1": ([0, 3, 3, 2.5, 1.25], 3), "why": ([], 2)})
    rows = re.findall(r"<tr><td>(\d+)</td><td><div class=\"bar\" style=\"width:(\d+)px\"></div></td><td>(\d+)</td>", page)
    assert [(p, c) for p, _, c in rows] == [("0", "1"), ("1", "1"), ("2", "0"), ("3", "3"),
                                           ("0", "0"), ("1", "0"), ("2", "0")]
    widths = {p: int(w) for p, w, _ in rows[:4]}
    assert widths["3"] == 160 and widths["0"] == widths["1"] == 53 and widths["2"] == 0  # scaled to the tallest
    assert page.count('class="histogram"') == 2 and "task1</b> (max 3)" in page
