"""A memory cap on a group of processes together (a memory cgroup), for the grading sandbox.

RLIMIT_AS caps each process alone: a kernel that forks hundreds of copies of itself can still fill
the machine's memory, and the kernel's OOM killer then kills the largest process of the machine,
which may be the grader. A memory cgroup caps the kernel's processes together; when they reach the
cap, the OOM killer chooses among them only. Both cgroup v1 (a `memory` hierarchy) and v2 (the
`memory` controller enabled for child groups) are used where this process may create groups, which
usually needs root. Elsewhere `create` returns None and says why.

Processes join a group through `join_command`, a prefix for the command that starts them; their
children stay in it. Kernels also ask the OOM killer to take them first (OOM_SCORE_ADJ).
"""
import os
import signal
import time
from pathlib import Path

PREFIX = "nncourse-"
OOM_SCORE_ADJ = 1000  # kernels (and their children) are the OOM killer's first choice, never the grader


def _own_memory_folder():
    """(folder of this process's memory cgroup, "v1" or "v2"), or raise OSError saying why not."""
    groups = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            groups[controller] = path
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        after = fields[fields.index("-") + 1:]
        root, mount_point, fstype, options = fields[3], fields[4], after[0], after[2].split(",")
        if fstype == "cgroup" and "memory" in options and "memory" in groups:
            version, path = "v1", groups["memory"]
        elif fstype == "cgroup2" and "" in groups and "memory" not in groups:
            version, path = "v2", groups[""]
        else:
            continue
        relative = os.path.relpath(path, root)
        if relative.startswith(".."):
            continue
        return Path(mount_point) / relative, version
    raise OSError("no memory cgroup is mounted for this process")


class MemoryGroup:
    """A memory cgroup of its own, capped at `limit_bytes`; `remove` kills what is left in it."""

    warned = False  # once per process

    def __init__(self, folder):
        self.folder, self.procs = folder, folder / "cgroup.procs"

    @classmethod
    def create(cls, limit_bytes, warn=None):
        """A new group, or None where groups cannot be created: then `warn`, if given, is called once
        per process with the reason."""
        try:
            parent, version = _own_memory_folder()
            remove_abandoned(parent)
            folder = parent / f"{PREFIX}{os.getpid()}-{time.monotonic_ns()}"
            folder.mkdir()
            group = cls(folder)
            try:
                limit = folder / ("memory.limit_in_bytes" if version == "v1" else "memory.max")
                if not limit.exists():  # v2: the controller is not enabled for children here
                    (parent / "cgroup.subtree_control").write_text("+memory")
                limit.write_text(str(limit_bytes))
            except OSError:
                group.remove()
                raise
            return group
        except OSError as err:
            if warn and not cls.warned:
                cls.warned = True
                warn(f"the memory of each kernel's processes together is not capped ({err}): a kernel that "
                     "forks many copies of itself can fill the machine's memory. Grading as root caps it.")
            return None

    def members(self):
        try:
            return [int(pid) for pid in self.procs.read_text().split()]
        except OSError:
            return []

    def remove(self):
        """Kill any process still in the group, then remove it (a fork bomb takes seconds to die)."""
        for _ in range(200):
            for pid in self.members():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                self.folder.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:  # busy until the killed processes are gone
                time.sleep(0.05)


def join_command(group, oom_score_adj=OOM_SCORE_ADJ):
    """A prefix for a command: it joins `group` (if any), sets its OOM score (if any), then runs."""
    script = ('if [ -n "$0" ]; then echo $$ > "$0"; fi; '  # if either fails, the command runs as without
              'if [ -n "$1" ]; then echo "$1" > /proc/self/oom_score_adj; fi; shift; exec "$@"')
    return ["/bin/sh", "-c", script, str(group.procs) if group else "",
            "" if oom_score_adj is None else str(oom_score_adj)]


def remove_abandoned(parent):
    """Remove the groups of grader processes that are gone (killed before removing theirs)."""
    for folder in parent.glob(f"{PREFIX}*"):
        owner = folder.name[len(PREFIX):].split("-")[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            MemoryGroup(folder).remove()
