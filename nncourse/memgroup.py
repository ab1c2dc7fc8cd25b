"""A memory cap on a group of processes together (a memory cgroup), for the grading sandbox.

RLIMIT_AS caps each process alone: a kernel that forks hundreds of copies of itself can still fill
the machine's memory, and the kernel's OOM killer then kills the largest process of the machine,
which may be the grader. A memory cgroup caps the kernel's processes together (RAM and swap); when
they reach the cap, the OOM killer chooses among them only. This needs a cgroup v1 `memory`
hierarchy that this process may write (as root), or a cgroup v2 group where it may enable the
`memory` controller for groups of its own (rarely possible: only where the group holds no process).
Elsewhere `create` returns None and says why.

Processes join a group through `join_command`, a prefix for the command that starts them; their
children stay in it. Kernels also ask the OOM killer to take them first (OOM_SCORE_ADJ).
"""
import os
import signal
import time
from pathlib import Path

PREFIX = "nncourse-"
OOM_SCORE_ADJ = 1000  # kernels (and their children) are the OOM killer's first choice, never the grader
NO_MEMORY_GROUPS = ("memory cgroups need a cgroup v1 memory hierarchy that this process may write (as root), "
                    "or a cgroup v2 group where it may enable the memory controller")


def _unescape(field):
    """A path field of /proc/self/mountinfo (spaces and the like are written as octal escapes)."""
    return field.encode().decode("unicode_escape")


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
        root, mount_point, fstype, options = _unescape(fields[3]), _unescape(fields[4]), after[0], after[2].split(",")
        if fstype == "cgroup" and "memory" in options and "memory" in groups:
            version, path = "v1", groups["memory"]
        elif fstype == "cgroup2" and "" in groups and "memory" not in groups:
            version, path = "v2", groups[""]
        else:
            continue
        relative = os.path.relpath(path, root)
        if relative.startswith("..") or "/.." in root:  # our group is not below this mount's root
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
                if version == "v1":
                    (folder / "memory.limit_in_bytes").write_text(str(limit_bytes))
                    if (folder / "memory.memsw.limit_in_bytes").exists():  # RAM and swap together
                        (folder / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
                else:
                    if not (folder / "memory.max").exists():
                        (parent / "cgroup.subtree_control").write_text("+memory")
                    (folder / "memory.max").write_text(str(limit_bytes))
                    (folder / "memory.swap.max").write_text("0")
            except OSError:
                group.remove()
                raise
            return group
        except OSError as err:
            if warn and not cls.warned:
                cls.warned = True
                warn(f"the memory of each kernel's processes together is not capped ({err}; {NO_MEMORY_GROUPS}): "
                     "a kernel that forks many copies of itself can fill the machine's memory")
            return None

    def name_after(self, pid):
        """Rename the group after process `pid`: it is abandoned once that process is gone."""
        folder = self.folder.with_name(f"{PREFIX}{pid}-{time.monotonic_ns()}")
        os.rename(self.folder, folder)
        self.folder, self.procs = folder, folder / "cgroup.procs"

    def members(self):
        try:
            return [int(pid) for pid in self.procs.read_text().split()]
        except OSError:
            return []

    def kill_members(self):
        """SIGKILL every process in the group. A pid read from the group may be reused by then: each
        is pinned (pidfd) and signalled only if the group still lists it."""
        if (self.folder / "cgroup.kill").exists():  # v2
            (self.folder / "cgroup.kill").write_text("1")
            return
        for pid in self.members():
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                if pid in self.members():
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
            except OSError:
                pass
            finally:
                os.close(fd)

    def remove(self, seconds=10.0):
        """Kill any process still in the group, then remove it, waiting up to `seconds` for them to
        end (a fork bomb's copies take seconds). False if the group is still there."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.kill_members()
                self.folder.rmdir()
                return True
            except FileNotFoundError:
                return True
            except OSError:  # busy until the killed processes are gone
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)


def join_command(group, oom_score_adj=OOM_SCORE_ADJ):
    """A prefix for a command: it joins `group` (if any), sets its OOM score (if any), then runs."""
    script = ('if [ -n "$0" ]; then echo $$ > "$0"; fi; '  # if either fails, the command runs as without
              'if [ -n "$1" ]; then echo "$1" > /proc/self/oom_score_adj; fi; shift; exec "$@"')
    return ["/bin/sh", "-c", script, str(group.procs) if group else "",
            "" if oom_score_adj is None else str(oom_score_adj)]


STUCK = set()  # abandoned groups whose processes would not end: not tried again by this process


def remove_abandoned(parent):
    """Remove the groups of grader processes that are gone (killed before removing theirs)."""
    for folder in parent.glob(f"{PREFIX}*"):
        owner = folder.name[len(PREFIX):].split("-")[0]
        if owner.isdigit() and gone(owner) and folder not in STUCK:
            if not MemoryGroup(folder).remove(seconds=1):
                STUCK.add(folder)


def gone(pid):
    """Whether process `pid` has ended (a zombie has, even before its new parent reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True
