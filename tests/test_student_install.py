"""The student's install: requirements that apply on every platform, and that the versions this
course is tested with satisfy."""
from importlib.metadata import version
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
PLATFORMS = [{"sys_platform": "linux", "platform_machine": "x86_64"}, {"sys_platform": "linux", "platform_machine": "aarch64"},
             {"sys_platform": "darwin", "platform_machine": "x86_64"}, {"sys_platform": "darwin", "platform_machine": "arm64"},
             {"sys_platform": "win32", "platform_machine": "AMD64"}]


def student_requirements():
    lines = (REPO / "requirements-student.txt").read_text().splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def test_every_package_the_notebook_imports_installs_on_every_platform():
    for platform in PLATFORMS:
        environment = dict(default_environment(), **platform)
        names = {r.name for r in student_requirements() if r.marker is None or r.marker.evaluate(environment)}
        assert names >= {"numpy", "matplotlib", "torch", "torchvision", "jupyterlab"}, platform


def test_the_tested_versions_satisfy_the_student_requirements():
    for requirement in student_requirements():
        assert requirement.specifier.contains(version(requirement.name), prereleases=True), \
            f"{requirement.name} {version(requirement.name)} is what the course is tested with, not {requirement}"


def test_the_notebook_imports_only_what_students_install():
    import json
    import re
    release = json.loads((REPO / "release" / "tutorial3" / "tutorial3.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in release["cells"] if c["cell_type"] == "code")
    imported = set(re.findall(r"^\s*(?:import|from) (\w+)", code, re.M))
    stdlib = {"os", "sys", "re", "contextlib", "traceback", "inspect", "typing"}
    installed = {r.name for r in student_requirements()} | {"IPython"}
    assert imported - stdlib - installed == set()
