"""The warm kernel template of a grader process (SandboxedKernelManager.fork_server): a sandbox
(bubblewrap, as root with only the capabilities that building each kernel's sandbox needs) running
nncourse/zygote.py, which imports ipykernel and the preload modules once, then forks one kernel per
request. Each kernel's stand-in, a small process in the grader (`zygote.py connect`), lives exactly
as long as the kernel, so the kernel manager starts, polls and kills it as it would the kernel.

A template is described by its recipe (the sandbox's arguments, its environment, the modules), so
that a run can start the template the last run used before its own settings are known
(start_early); the first kernel it is asked for checks the recipe against the real one.

With SandboxedKernelManager.keep_template_seconds, a template outlives its grader process: the next
grader process of the same recipe takes it over (`adopt`), and finds ipykernel and the preloaded
modules imported already. One process owns a template at a time; its kernels' stand-ins end with it.
"""
import atexit
import hashlib
import importlib.util
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from . import kernel_env, memgroup

CAPABILITIES = ["CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_KILL",
                "CAP_SYS_RESOURCE"]  # the last: a kernel's OOM score is set so that the kernel cannot lower it
START_SECONDS = 300  # importing torch on a loaded machine
PLACE = "/var/tmp"  # templates' folders: not under /tmp, since each kernel mounts an empty /tmp of its own
ENVIRONMENT = ["LD_PRELOAD", "MALLOC_CONF", *kernel_env.THREAD_VARIABLES, "LANG", "LC_ALL", "OPENBLAS_CORETYPE",
               "OPENBLAS_L2_SIZE"]  # what the template's Python and libraries read when they load


def bind_with_parents(args, path, mode="--ro-bind"):
    """Bind `path` at the same place, creating readable parent folders in the sandbox."""
    parents = [p for p in reversed(Path(path).parents) if str(p) != "/"]
    for parent in parents:
        args += ["--perms", "0755", "--dir", str(parent)]
    args += [mode, str(path), str(path)]


def remove_abandoned(mine):
    """Remove the folders of templates that are gone without cleaning up (killed, or ended after
    waiting for a next owner): `owner` holds the pid of the process they lived as long as."""
    for base in Path(PLACE).glob("nncourse-template-*"):
        try:
            owner = (base / "control" / "owner").read_text()
        except OSError:
            continue
        if base != mine and memgroup.gone(owner):
            shutil.rmtree(base, ignore_errors=True)


def recipe_key(recipe):
    """What a template must match to serve a run: its recipe, the zygote's own code, and the files of the
    modules it preloads as they are now (an upgraded package gets a new template)."""
    from . import zygote
    code = hashlib.sha256(Path(zygote.__file__).read_bytes()).hexdigest()
    return json.dumps(dict(recipe, zygote=code, installed=[module_file(name) for name in recipe.get("modules", ())]),
                      sort_keys=True)


def module_file(name):
    """Where the package of module `name` would be imported from, and that file's modification time,
    without importing anything."""
    try:
        origin = importlib.util.find_spec(name.split(".")[0]).origin
        return [origin, os.stat(origin).st_mtime_ns]
    except (ImportError, AttributeError, TypeError, ValueError, OSError):
        return [name, None]


class NotAChild:
    """The process of a template that an earlier grader process started: Popen's poll, wait and kill."""

    def __init__(self, pid):
        self.pid, self.fd = pid, os.pidfd_open(pid)

    def poll(self):
        return 0 if select.select([self.fd], [], [], 0)[0] else None

    def wait(self, timeout=None):
        if not select.select([self.fd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired("kernel template", timeout)
        return 0

    def kill(self):
        try:
            signal.pidfd_send_signal(self.fd, signal.SIGKILL)
        except ProcessLookupError:
            pass


class KernelTemplate:
    running = {}  # recipe (JSON) -> KernelTemplate, in this process
    given_up = set()  # recipes (JSON) whose template's kernel died before running anything
    early = None  # started by start_early from a saved recipe, not yet claimed
    recipe_file = None  # where `of` saves the recipe of a template it starts, for start_early
    lock = threading.Lock()

    @classmethod
    def of(cls, km):
        """The template for the settings of `km` (a SandboxedKernelManager), started if there is
        none; None if it stopped (then kernels start in a sandbox of their own, as without one)."""
        recipe = {"python": sys.executable, "bwrap": km._bwrap_args(),
                  "env": {k: v for k, v in kernel_env.kernel_environment(os.environ, km.threads).items()
                          if k in ENVIRONMENT},
                  "modules": list(km.config.SandboxedExecute.get("preload_modules", ())),
                  "memory": km.memory_gib * 1024 ** 3, "keep": km.keep_template_seconds}
        key = recipe_key(recipe)
        with cls.lock:
            if key in cls.given_up:
                return None
            template = cls.running.get(key)
            if template is None:
                early, cls.early = cls.early, None
                if early and early.key == key:
                    template = early
                else:
                    if early:
                        early.stop()
                    try:
                        template = cls.adopt(key) or cls(recipe, km.log.warning)
                    except OSError as err:  # e.g. no folder for it: kernels start as without a template
                        km.log.warning("the kernel template cannot start (%s); kernels start without it", err)
                        return None
                    cls.save_recipe(recipe)
                cls.running[key] = template
            if template.process.poll() is not None:
                km.log.warning("the kernel template stopped (%s); kernels start without it", template.said())
                return None
            return template

    @classmethod
    def save_recipe(cls, recipe):
        if cls.recipe_file:
            try:
                Path(cls.recipe_file).parent.mkdir(parents=True, exist_ok=True)
                Path(cls.recipe_file).write_text(json.dumps(recipe, indent=1))
            except OSError:
                pass  # only the next run's early start is lost

    @classmethod
    def start_early(cls, recipe_file):
        """Start the template of the recipe saved in `recipe_file`, if any, as root: `of` claims
        it if its settings are the same, and stops it otherwise."""
        try:
            recipe = json.loads(Path(recipe_file).read_text())
        except (OSError, ValueError):
            return
        if os.geteuid() == 0 and recipe.get("python") == sys.executable and cls.early is None:
            try:
                cls.early = cls.adopt(recipe_key(recipe)) or cls(recipe)
            except Exception:  # e.g. a recipe of an older version: the first kernel starts one, or says why not
                pass

    def __init__(self, recipe, warn=None):
        """Start the template; it is ready once its socket exists (each stand-in waits for that).
        The template and its kernels share a memory cap (memgroup); `warn` says if there is none."""
        self.key, self.keep = recipe_key(recipe), recipe.get("keep", 0)
        self.base = Path(tempfile.mkdtemp(prefix="nncourse-template-", dir=PLACE))
        self.control, self.kernels = self.base / "control", self.base / "kernels"
        self.control.mkdir(mode=0o700)
        self.kernels.mkdir()
        (self.control / "owner").write_text(str(os.getpid()))
        remove_abandoned(self.base)
        stop_unowned(self.key)
        for folder, mode in ((self.base, 0o711), (self.kernels, 0o711)):  # kernels find their own folders only
            os.chmod(folder, mode)
        matplotlib = self.kernels / ".matplotlib"  # font cache, built once: kernels read it, never write it
        matplotlib.mkdir(mode=0o755)
        self.socket = self.control / "template.sock"
        lifeline, self.lifeline = os.pipe()  # the template's owner: this process, while it is open
        # PID 1 of its namespace: when it ends, the system kills every process of its kernels
        args = list(recipe["bwrap"])
        bind_with_parents(args, self.control, "--bind")
        bind_with_parents(args, self.kernels, "--bind")
        args += ["--chdir", str(self.control), "--as-pid-1", "--cap-drop", "ALL"]
        for capability in CAPABILITIES:
            args += ["--cap-add", capability]
        env = dict(recipe["env"], HOME=str(self.control), PATH="/usr/local/bin:/usr/bin:/bin",
                   PYTHONDONTWRITEBYTECODE="1", MPLCONFIGDIR=str(matplotlib))
        self.memory = memgroup.MemoryGroup.create(recipe["memory"], warn) if recipe.get("memory") else None
        try:
            with open(self.control / "template.log", "wb") as log:
                self.process = subprocess.Popen(
                    [*memgroup.join_command(self.memory, oom_score_adj=None), *args, "--", recipe["python"], "-c",
                     self.source, "serve", str(self.socket), str(lifeline), str(self.keep), *recipe["modules"]],
                    env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, pass_fds=[lifeline])
        except BaseException:
            os.close(self.lifeline)
            if self.memory:
                self.memory.remove()
            shutil.rmtree(self.base, ignore_errors=True)
            raise
        finally:
            os.close(lifeline)
        if self.keep:  # it may outlive this process: its folder and memory group go when it ends
            if self.memory:
                self.memory.name_after(self.process.pid)
            (self.control / "memory").write_text(str(self.memory.folder) if self.memory else "")
            (self.control / "key").write_text(self.key)
            (self.control / "owner").write_text(str(self.process.pid))
        atexit.register(self.release)

    @property
    def source(self):
        from . import zygote
        return Path(zygote.__file__).read_text()

    @classmethod
    def adopt(cls, key):
        """A template of this recipe that an earlier grader process left up, now owned by this
        process; None if there is none, or only ones owned by other processes."""
        return next(cls.left_up(key.__eq__), None)

    @classmethod
    def left_up(cls, wanted):
        """The templates left up by earlier grader processes whose key `wanted(key)` accepts, each
        owned by this process once yielded (those owned by another process are skipped)."""
        for base in Path(PLACE).glob("nncourse-template-*"):
            control = base / "control"
            try:
                key = (control / "key").read_text()
                owner = owner_connection(control) if wanted(key) else None
            except OSError:
                continue
            if owner is None:
                continue
            self = cls.__new__(cls)
            self.key, self.keep, self.lifeline = key, json.loads(key).get("keep", 0), owner
            self.base, self.control, self.kernels, self.socket = base, control, base / "kernels", control / "template.sock"
            try:
                self.process = NotAChild(int((control / "owner").read_text()))
                folder = (control / "memory").read_text()
            except (OSError, ValueError):
                owner.close()
                continue
            self.memory = memgroup.MemoryGroup(Path(folder)) if folder else None
            atexit.register(self.release)
            yield self

    def release(self):
        """At this process's end: a template kept for the next grader process is left up (it ends
        after keep_template_seconds without one); any other is stopped."""
        self.stop(keep=bool(self.keep))

    def give_up(self):
        """Stop this template for good, after one of its kernels died before running anything:
        every later kernel of its settings in this process starts in a sandbox of its own."""
        with KernelTemplate.lock:
            KernelTemplate.given_up.add(self.key)
            if KernelTemplate.running.get(self.key) is self:
                del KernelTemplate.running[self.key]
        self.stop()

    def said(self):
        """The end of the template's log."""
        try:
            return (self.control / "template.log").read_text(errors="replace")[-2000:].strip() or "no message"
        except OSError:
            return "no log"

    def forks(self, kernel_cmd):
        """Whether a kernel of this command can be forked: ipykernel in this grader's Python."""
        python = shutil.which(kernel_cmd[0]) if kernel_cmd else None
        return (python is not None and Path(python).resolve() == Path(sys.executable).resolve()
                and kernel_cmd[1:3] == ["-m", "ipykernel_launcher"])

    def stand_in_command(self, kernel_cmd, request):
        """The command of the kernel's stand-in, which asks the template for it."""
        return [sys.executable, "-I", "-S", "-c", self.source, "connect", str(self.socket), str(self.process.pid),
                str(START_SECONDS), json.dumps(dict(request, args=kernel_cmd[3:]))]

    def stop(self, keep=False):
        """Stop the template and its kernels now: its PID 1 is killed, and the system kills the rest
        of its namespace. (If this process ends first, the template sees its pipe close.) With
        `keep`, only give it up: it waits for its next owner."""
        if self.lifeline is None:
            return
        os.close(self.lifeline) if isinstance(self.lifeline, int) else self.lifeline.close()
        self.lifeline = None
        if keep and self.process.poll() is None:
            return
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        except OSError:
            children = []
        for pid in children:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        if self.memory:
            self.memory.remove()
        shutil.rmtree(self.base, ignore_errors=True)


def owner_connection(control):
    """A connection that makes this process the template's owner while it is open, or None if the
    template has an owner already."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(5)
        conn.connect(str(control / "template.sock"))
        conn.sendall(b'{"own": true}\n')
        answer = conn.recv(16)
        conn.settimeout(None)
    except OSError:
        conn.close()
        raise
    if answer != b"owned\n":
        conn.close()
        return None
    return conn


def stop_unowned(key):
    """Stop the templates left up for other recipes than `key`: a new template replaces them."""
    for template in KernelTemplate.left_up(lambda other: other != key):
        template.stop()
