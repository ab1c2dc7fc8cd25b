"""Training in a sandboxed kernel, for a student whose helpers do not agree with the reference
(or crash): the student's own notebook code (without its tests and training cells) runs first,
then the reference trains with the student's helpers, or the student's model with correct
helpers. The kernel reports the trained parameters as plain arrays; the grader computes the
accuracy. Student code runs next to the reference here, so it could change this one figure:
that student has already lost the points of the helper concerned (README, threat model).
"""
import tempfile
from pathlib import Path

import nbformat

from nncourse.verdicts import REPORT_MIME, Failed, cell_reports
from . import reference as ref

RETRAIN_CELL = '''
def _retrain(model_name, student_model, reference_source, mime):
    import base64, io
    import numpy as np
    reference = {{"__name__": "reference"}}
    exec(compile(reference_source, "reference", "exec"), reference)
    model = reference["MODELS"][model_name]
    notebook = globals()
    try:
        if student_model:
            net = reference["train"](model_name, train_imgs, train_lbls, cls=notebook[model_name])
        else:
            cls = model.cls
            if model.parent:
                cls = type("WithStudentForward", (cls,), {{"forward_pass": notebook[model_name].forward_pass}})
            net = reference["train"](model_name, train_imgs, train_lbls, sampler=notebook["get_random_batch"],
                                     loss=notebook[model.loss], update=notebook[model.update], cls=cls)
        fields = {{f"param{{i}}": reference["as_numpy"](p) for i, p in enumerate(net.params)}}
    except Exception as err:
        fields = {{"error": np.array(f"{{type(err).__name__}}: {{err}}")}}
    buffer = io.BytesIO()
    np.savez(buffer, **fields)
    from IPython.display import display
    display({{mime: {{"test": "retrain", "npz": base64.b64encode(buffer.getvalue()).decode()}}}}, raw=True)


_retrain({model!r}, {student_model!r}, {source!r}, {mime!r})
'''


def retrain_notebook(nb, model_name, student_model):
    """The student's notebook up to the model's accuracy test (what was defined when the model
    trained: later cells, such as a Bonus, play no part), without tests, set-up and training
    cells, then the retraining."""
    from .checks import ACCURACY_TESTS, SETUP_CELL, TRAINING_CELLS
    grade_ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells]
    test = next(t for t, model in ACCURACY_TESTS.items() if model == model_name)
    before = nb.cells[:grade_ids.index(test)] if test in grade_ids else nb.cells
    keep = [nbformat.v4.new_code_cell(c.source) for c in before if c.cell_type == "code"
            and not c.metadata.get("nbgrader", {}).get("grade")
            and c.metadata.get("nbgrader", {}).get("grade_id") not in TRAINING_CELLS | {SETUP_CELL}]
    keep.append(nbformat.v4.new_code_cell(RETRAIN_CELL.format(
        model=model_name, student_model=student_model, source=Path(ref.__file__).read_text(), mime=REPORT_MIME)))
    out = nbformat.v4.new_notebook(cells=keep)
    out.metadata = nb.metadata
    return out


def retrain(nb, step, test, model_name, student_model):
    """Trained parameters; Failed if the sandboxed run gives none."""
    from nncourse.sandbox import SandboxedExecute
    run = retrain_notebook(nb, model_name, student_model)
    with tempfile.TemporaryDirectory(prefix="nncourse-retrain-") as folder:
        SandboxedExecute(config=step.config).preprocess(run, {"metadata": {"path": folder}})
    report = cell_reports(run.cells[-1], "retrain", step.max_report_mib * 1024 ** 2)
    if report.fields is None or "error" in report.fields:
        why = report.problem if report.fields is None else str(report.fields["error"])
        raise Failed(f"{model_name} could not be trained with "
                     f"{'correct helper functions' if student_model else 'your helper functions'}: {why}")
    return [report.fields[f"param{i}"] for i in range(len(report.fields))]
