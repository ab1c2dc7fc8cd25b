"""Sandboxed grading kernels with bubblewrap (Debian package `bubblewrap`).

Each kernel runs in its own mount, PID, network, IPC and UTS namespaces:
- no network at all, loopback included (its own empty network namespace);
- a read-only view of only the system directories, the Python installation and the course's data, plus one
  fresh writable scratch directory (its working directory) and a private folder for the sockets
  that connect it to the grader (ZeroMQ over `ipc`, since there is no shared network);
- resource limits (rlimits): address space, processes, open files, file size, CPU time;
- when the grader runs as root, the kernel drops to an unprivileged uid of its own (root would
  ignore the process limit); as an ordinary user, bubblewrap uses unprivileged user namespaces.

The gradebook, the source and release notebooks, other submissions, the repository and the home
directory are simply not there. nbgrader_config.py makes SandboxedKernelManager the kernel manager
of nbgrader's Execute step, so plain `nbgrader autograde` and the batch grader both use it.
"""
import ast
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from queue import Empty

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import ensure_async
from nbclient.exceptions import DeadKernelError
from nbformat.v4 import new_output
from nbgrader.preprocessors import Execute
from traitlets import Bool, Integer, List, Type, Unicode, default

from . import kernel_env, memgroup, template
from .template import KernelTemplate, bind_with_parents
from .profile import ensure_prepared
from .verdicts import REPORT_MIME, inputs_from_file

DISABLE_HINT = ("To grade without the sandbox, knowingly, set NNCOURSE_SANDBOX=off in the environment "
                "(or c.SandboxedKernelManager.enabled = False in nbgrader_config.py).")
GIB = 1024 ** 3
TMP_MIB, SHM_MIB = 256, 64  # each kernel's own /tmp and /dev/shm (memory)


class SandboxError(RuntimeError):
    """The sandbox cannot start; the message names the missing piece and how to proceed."""


def missing_pieces(as_root):
    """What this machine lacks to run the sandbox (empty list: nothing)."""
    tools = ["bwrap", "prlimit"] + (["setpriv"] if as_root else [])
    missing = [f"`{t}` (Debian package {'bubblewrap' if t == 'bwrap' else 'util-linux'})"
               for t in tools if shutil.which(t) is None]
    if missing:
        return missing
    flags = ["--unshare-net", "--unshare-pid"] + ([] if as_root else ["--unshare-user"])
    probe = subprocess.run(["bwrap", *flags, "--ro-bind", "/", "/", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return [f"namespaces for bubblewrap ({probe.stderr.strip()}); as an ordinary user this needs "
                f"unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)"]
    return []


def python_roots():
    """Folders the kernel's Python needs: the virtualenv and the installation it was made from."""
    roots = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(sys.executable).resolve().parent.parent}
    return sorted(roots)


def sandbox_disabled(enabled=True):
    return not enabled or os.environ.get("NNCOURSE_SANDBOX", "").lower() == "off"


def check_sandbox(settings=None):
    """Raise SandboxError, naming what is missing, if sandboxed kernels cannot start here."""
    if sandbox_disabled((settings or {}).get("SandboxedKernelManager", {}).get("enabled", True)):
        return
    missing = missing_pieces(os.geteuid() == 0)
    if missing:
        raise SandboxError("cannot start the grading sandbox: missing " + "; ".join(missing) +
                           ". Run ./setup as root to install it. " + DISABLE_HINT)


def configured_data_dir(config):
    """The course's data folder as the configuration names it: SandboxedKernelManager.data_dir,
    else the folder in its data variable ("" if neither)."""
    settings = config.SandboxedKernelManager
    return settings.get("data_dir") or os.environ.get(settings.get("data_variable", "DATA_DIR"), "")


def data_mount(data_dir):
    """Where a sandboxed kernel sees the data folder `data_dir`."""
    return f"/data/{Path(data_dir).name}"


class PromptKernelClient(AsyncKernelClient):
    """jupyter_client's client, ready as soon as the kernel has answered on both channels.

    jupyter_client's own `wait_for_ready` waits 0.2 s on IOPub after each kernel_info reply, asks
    again when a new IOPub subscription missed the kernel's status messages (ZeroMQ's slow joiner),
    then waits 0.2 s more for silence: 0.2-0.4 s per kernel. This one reads IOPub up to its own
    request's idle status; after a miss it asks again, waiting `first_wait`, then twice as long at
    each miss, up to `last_wait`, so that a loaded machine cannot keep it asking. Messages of other
    requests are left to nbclient, which ignores them."""

    first_wait, last_wait = 0.05, 1.0
    reply_wait = 1.0  # seconds on the shell channel before asking again, as jupyter_client

    async def wait_for_ready(self, timeout=None):
        deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
        asked, replied, wait = {self.kernel_info()}, False, self.first_wait
        while True:
            try:
                if not replied:
                    msg = await ensure_async(self.shell_channel.get_msg(timeout=self.reply_wait))
                    if msg["msg_type"] == "kernel_info_reply" and msg["parent_header"].get("msg_id") in asked:
                        replied = True
                        self._handle_kernel_info_reply(msg)
                    continue
                msg = await ensure_async(self.iopub_channel.get_msg(timeout=wait))
                if (msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle"
                        and msg["parent_header"].get("msg_id") in asked):
                    return
                continue
            except Empty:
                if replied:
                    wait = min(2 * wait, self.last_wait)
            if not await self._async_is_alive():
                raise RuntimeError("Kernel died before replying to kernel_info")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kernel didn't respond in {timeout:.0f} seconds")
            asked.add(self.kernel_info())


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernels run inside a bubblewrap sandbox (its clients: PromptKernelClient)."""

    client_factory = Type(PromptKernelClient, klass=AsyncKernelClient, config=True)

    enabled = Bool(True, help="Run kernels in the sandbox. Turning this off runs student code with "
                              "the grader's own rights.").tag(config=True)
    memory_gib = Integer(8, help="Memory of the kernel, GiB: the address space of each of its processes "
                                 "(RLIMIT_AS), and, where the grader may create memory cgroups (as root), the "
                                 "memory of all its processes together (a kernel template and the kernels "
                                 "forked from it share one cap)").tag(config=True)
    max_processes = Integer(512, help="Processes and threads of the kernel's uid (RLIMIT_NPROC)").tag(config=True)
    max_open_files = Integer(512, help="Open files (RLIMIT_NOFILE)").tag(config=True)
    max_file_mib = Integer(256, help="Largest file the kernel may write, MiB (RLIMIT_FSIZE)").tag(config=True)
    cpu_seconds = Integer(3600, help="CPU time of the kernel (RLIMIT_CPU)").tag(config=True)
    data_dir = Unicode("", help="The course's data folder, shown read-only to kernels as /data/<its name> "
                                "(default: the folder in $<data_variable>)").tag(config=True)
    data_variable = Unicode("DATA_DIR", help="Environment variable that tells kernels where the data "
                                             "folder is").tag(config=True)
    threads = Integer(0, help="BLAS/OpenMP threads of each kernel, for kernels that share the machine "
                              "(0: the libraries' default)").tag(config=True)
    fork_server = Bool(False, help="Fork each kernel from a warm template that this grader process starts once "
                                   "(nncourse/zygote.py): ipykernel and SandboxedExecute.preload_modules are "
                                   "imported once per process instead of once per notebook. Each kernel still gets "
                                   "a sandbox and a uid of its own. Only when grading as root (each kernel needs "
                                   "a uid of its own); otherwise every kernel starts its own sandbox.").tag(config=True)
    keep_template_seconds = Integer(0, help="How long a kernel template (fork_server) stays up after its grader "
                                           "process ends, waiting for the next grading command of the same settings "
                                           "to take it over: that command's kernels then start without importing "
                                           "anything. Until then it holds its modules' memory. 0: it ends with its "
                                           "grader process.").tag(config=True)

    def _data_dir(self):
        return self.data_dir or os.environ.get(self.data_variable, "")

    def _data_mount(self):
        return data_mount(self._data_dir())

    def _sandbox_off(self):
        return sandbox_disabled(self.enabled)

    def _forking(self):
        return self.fork_server and os.geteuid() == 0 and not self._sandbox_off()

    async def _async_pre_start_kernel(self, **kw):
        if getattr(self, "_memory", None):  # a restart: the old kernel's group goes
            self._memory.remove()
        self._template = self._memory = None
        if not self._sandbox_off():
            check_sandbox()
            as_root = os.geteuid() == 0
            self._uid = 200000 + secrets.randbelow(100000) if as_root else os.getuid()
            if self._forking():
                self._template = KernelTemplate.of(self)
            if not self._template:
                self._memory = memgroup.MemoryGroup.create(self.memory_gib * GIB, self.log.warning)
            place = self._template.kernels if self._template else None
            self._runtime = Path(tempfile.mkdtemp(prefix="nncourse-kernel-", dir=place))
            self._scratch = Path(tempfile.mkdtemp(prefix="nncourse-scratch-", dir=place))
            for folder in (self._runtime, self._scratch):
                os.chmod(folder, 0o700)
                if as_root:
                    os.chown(folder, self._uid, self._uid)
            self.transport = "ipc"
            self.ip = str(self._runtime / "kernel")
            self.connection_file = str(self._runtime / "kernel.json")
        return await super()._async_pre_start_kernel(**kw)

    def _bwrap_args(self, writable=(), cwd=None):
        """bubblewrap's arguments, up to `--`: the namespaces, the read-only system, the data
        folder, and the `writable` folders bound at their own paths."""
        data_dir = self._data_dir()
        args = ["bwrap", "--new-session", "--unsetenv", "JPY_PARENT_PID", "--unshare-ipc", "--unshare-pid", "--unshare-net",
                "--unshare-uts", "--unshare-cgroup-try", "--proc", "/proc", "--dev", "/dev",
                "--size", str(SHM_MIB << 20), "--perms", "1777", "--tmpfs", "/dev/shm",
                "--size", str(TMP_MIB << 20), "--perms", "1777", "--tmpfs", "/tmp"]
        if os.geteuid() != 0:
            args += ["--unshare-user"]
        for system in ("/usr", "/bin", "/lib", "/lib64", "/sbin", "/etc/alternatives", "/etc/ssl", "/etc/fonts"):
            if os.path.exists(system):
                bind_with_parents(args, system)
        for root in python_roots():
            bind_with_parents(args, root)
        if data_dir and Path(data_dir).is_dir():
            args += ["--perms", "0755", "--dir", "/data", "--ro-bind", str(Path(data_dir).resolve()),
                     self._data_mount()]
        for folder in writable:
            bind_with_parents(args, folder, "--bind")
        return args + (["--chdir", str(cwd)] if cwd else [])

    def _limits(self):
        """The kernel's resource limits, by prlimit's names."""
        return {"as": self.memory_gib * GIB, "nproc": self.max_processes, "nofile": self.max_open_files,
                "fsize": self.max_file_mib * 1024 ** 2, "cpu": self.cpu_seconds, "core": 0}

    def _sandbox_command(self, kernel_cmd):
        args = memgroup.join_command(self._memory) + self._bwrap_args([self._runtime, self._scratch], self._scratch)
        args += ["--die-with-parent", "--", "prlimit", *(f"--{name}={value}" for name, value in self._limits().items()), "--"]
        if os.geteuid() == 0:
            args += ["setpriv", f"--reuid={self._uid}", f"--regid={self._uid}", "--clear-groups",
                     "--inh-caps=-all", "--bounding-set=-all", "--"]
        return args + kernel_cmd

    KEPT_VARIABLES = [*template.ENVIRONMENT, "NBGRADER_EXECUTION"]

    def _sandbox_env(self, env):
        """A clean environment: nothing of the grader's but what the kernel needs."""
        clean = {k: env[k] for k in self.KEPT_VARIABLES if k in env}
        scratch = str(self._scratch)
        if self._data_dir():
            clean[self.data_variable] = self._data_mount()
        clean.update(HOME=scratch, TMPDIR="/tmp", PATH="/usr/local/bin:/usr/bin:/bin",
                     MPLCONFIGDIR=f"{scratch}/.matplotlib", IPYTHONDIR=f"{scratch}/.ipython",
                     JUPYTER_RUNTIME_DIR=str(self._runtime), PYTHONDONTWRITEBYTECODE="1")
        return clean

    async def _async_launch_kernel(self, kernel_cmd, **kw):
        kw["env"] = kernel_env.kernel_environment(kw.get("env") or os.environ, self.threads)
        if self._data_dir():
            kw["env"].setdefault(self.data_variable, self._data_dir())
        if self._template and self._template.forks(kernel_cmd):
            kernel_cmd = self._template.stand_in_command(kernel_cmd, {
                "uid": self._uid, "cwd": str(self._scratch), "env": self._sandbox_env(kw["env"]),
                "limits": self._limits(), "oom_score_adj": memgroup.OOM_SCORE_ADJ, "tmp_mib": TMP_MIB, "shm_mib": SHM_MIB})
            kw["env"] = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        elif not self._sandbox_off():
            kernel_cmd = self._sandbox_command(kernel_cmd)
            kw["env"] = self._sandbox_env(kw["env"])
        if not self._sandbox_off():
            kw["cwd"] = str(self._scratch)
            # ipykernel's start-up notice, and anything the student's code writes to the process's own
            # stdout/stderr: not the grader's streams, which the kernel could otherwise write or read back
            kw["stdout"] = kw["stderr"] = subprocess.DEVNULL
            if os.geteuid() == 0:
                os.chown(self.connection_file, self._uid, self._uid)
        return await super()._async_launch_kernel(kernel_cmd, **kw)

    async def _async_interrupt_kernel(self):
        """Interrupt by message: a signal would reach bubblewrap, not the kernel."""
        if self._sandbox_off():
            return await super()._async_interrupt_kernel()
        self._connect_control_socket()
        self.session.send(self._control_socket, self.session.msg("interrupt_request", content={}))

    interrupt_kernel = _async_interrupt_kernel  # the public name is bound to the base class's method

    async def _async_cleanup_resources(self, restart=False):
        await super()._async_cleanup_resources(restart)
        if not restart:
            self._remove_folders()

    cleanup_resources = _async_cleanup_resources  # as for interrupt_kernel

    def _remove_folders(self):
        if getattr(self, "_memory", None):
            self._memory.remove()
        for folder in (getattr(self, "_runtime", None), getattr(self, "_scratch", None)):
            if folder:
                shutil.rmtree(folder, ignore_errors=True)


class SandboxedExecute(Execute):
    """nbgrader's Execute step with sandboxed kernels, and two more limits: the notebook's total
    output, and a cell that keeps running after being interrupted at the time limit (code that
    ignores SIGINT), whose kernel is then stopped. A kernel that dies or is stopped does not stop
    grading: the cells it did not run get an error output (so their tests score 0) and the reason
    goes in the notebook's metadata (nncourse.stopped)."""

    interrupt_grace = Integer(10, help="Seconds a cell may take to stop after being interrupted").tag(config=True)
    iopub_timeout = Integer(60, help="Seconds to wait, after a cell finishes, for the rest of its output to "
                                     "arrive (nbclient's default of 4 s is too short for a test report of "
                                     "several MiB on a loaded machine)").tag(config=True)
    max_output_mib = Integer(20, help="Output a notebook may produce, MiB; more is dropped").tag(config=True)
    max_reports_mib = Integer(64, help="Test reports a notebook may send, MiB in all; more are dropped, "
                                       "so their tests fail").tag(config=True)
    preload_modules = List(Unicode(), help="Modules that a kernel started before its notebook is known "
                                           "(KernelInAdvance: `nncourse grade`, one submission at a time) "
                                           "imports while the grader prepares the notebook, so that the "
                                           "notebook's own imports find them loaded. No name is added to "
                                           "the notebook's namespace.").tag(config=True)

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("kernel_manager_class", SandboxedKernelManager)
        super().__init__(*args, **kwargs)

    @default("shutdown_kernel")
    def _stop_at_once(self):
        return "immediate"  # the kernel is thrown away; waiting for its clean exit took ~1.4 s

    def preprocess(self, nb, resources, km=None):
        """`km`: a kernel already started (KernelInAdvance.km), stopped here afterwards. A kernel
        forked from the template that dies before its first cell is the grader's failure, not the
        notebook's: the template is given up (KernelTemplate.give_up) and the notebook runs again
        in a kernel with a sandbox of its own."""
        data_dir = configured_data_dir(self.config)
        ensure_prepared(nb, data_dir, log=self.log.warning)  # grading profile
        sandboxed = not sandbox_disabled(self.config.SandboxedKernelManager.get("enabled", True))
        inline = inputs_from_file(nb, data_dir, data_mount(data_dir) if sandboxed else Path(data_dir).resolve(),
                                  log=self.log.warning)
        try:
            return self.run_in_kernel(nb, resources, km)
        finally:  # the notebook as it was sanitized
            for index, source in inline.items():
                nb.cells[index].source = source

    def run_in_kernel(self, nb, resources, km):
        while True:
            self._output_bytes, self._output_capped, self._report_bytes, self._cells_started = 0, False, 0, 0
            self._created_km = None
            try:
                return super().preprocess(nb, resources, km=km)
            except DeadKernelError as err:
                reason = str(err) or "the kernel died"
            except Exception as err:  # e.g. the kernel could not start
                if isinstance(err, SandboxError):
                    raise
                reason = f"{type(err).__name__}: {err}"
            finally:
                if km is not None:  # nbclient leaves a kernel it did not start running
                    self.stop_given_kernel()
            forked_from = getattr(km or self._created_km, "_template", None)  # nbclient forgets a failed one
            if self._cells_started or not forked_from:
                break
            self.log.warning("a kernel forked from the kernel template died before its first cell (%s); this "
                             "notebook and the later ones start in a sandbox of their own. The template's log: %s",
                             reason, forked_from.said())
            forked_from.give_up()
            km = None
        nb.metadata.setdefault("nncourse", {})["stopped"] = reason
        mark_unrun_cells(nb, f"not run: {reason}")
        return nb, resources

    def stop_given_kernel(self):
        """Stop the kernel passed to preprocess; one that died is already gone (nbclient may have
        cleaned it up itself)."""
        try:
            if self.km is not None:
                self._cleanup_kernel()
        except Exception as err:
            self.log.warning("could not stop the kernel: %s: %s", type(err).__name__, err)

    after_cell = None  # called as after_cell(nb, index) once a cell has run (batch workers: EarlyVerdicts)
    before_cell = None  # called as before_cell(index) before a cell is sent to the kernel

    def create_kernel_manager(self):
        self._created_km = super().create_kernel_manager()
        return self._created_km

    def preprocess_cell(self, cell, resources, index):
        self._cells_started += 1
        if self.before_cell:
            self.before_cell(index)
        cell, resources = super().preprocess_cell(cell, resources, index)
        if self.after_cell:
            self.after_cell(self.nb, index)
        stand_ins = cell.metadata.get("nncourse", {}).get("stand_ins")
        if stand_ins:
            self.provide_missing(stand_ins)
        return cell, resources

    def provide_missing(self, stand_ins):
        """Put each stand-in ({name: {source, object}}) in the kernel if the notebook has nothing
        of that name, so that later tasks can run. The kernel only answers which names are
        missing; a wrong answer only costs that student the later tasks."""
        names = sorted(stand_ins)
        reply = self.wait_for_reply(self.kc.execute(
            "", silent=True, store_history=False,
            user_expressions={"missing": f"[n for n in {names!r} if globals().get(n) is None]"}))
        try:
            answer = reply["content"]["user_expressions"]["missing"]["data"]["text/plain"]
            missing = [n for n in ast.literal_eval(answer) if n in stand_ins]
        except (KeyError, TypeError, ValueError, SyntaxError):
            return
        for name in missing:
            code = (f"_stand_in = {{}}\nexec(compile({stand_ins[name]['source']!r}, 'stand-in', 'exec'), _stand_in)\n"
                    f"globals()[{name!r}] = _stand_in[{stand_ins[name]['object']!r}]\ndel _stand_in\n")
            self.wait_for_reply(self.kc.execute(code, silent=True, store_history=False))

    async def _async_handle_timeout(self, timeout, cell=None):
        reply = await super()._async_handle_timeout(timeout, cell)  # interrupts the kernel
        try:  # the interrupted cell's own reply shows that the kernel stopped it
            await ensure_async(self.kc.shell_channel.get_msg(timeout=self.interrupt_grace))
        except Empty:
            await ensure_async(self.km.shutdown_kernel(now=True))
            raise DeadKernelError(f"a cell was still running {self.interrupt_grace} s after being interrupted at "
                                  f"the {timeout} s limit, so its kernel was stopped") from None
        return reply

    def output(self, outs, msg, display_id, cell_index):
        content = msg.get("content", {})
        size = len(json.dumps(content))
        if REPORT_MIME in (content.get("data") or {}):  # test reports have a budget of their own
            self._report_bytes += size
            if self._report_bytes <= self.max_reports_mib * 1024 ** 2:
                return super().output(outs, msg, display_id, cell_index)
            return None  # dropped: that test fails for want of a report
        self._output_bytes += size
        if self._output_bytes <= self.max_output_mib * 1024 ** 2:
            return super().output(outs, msg, display_id, cell_index)
        if not self._output_capped:
            self._output_capped = True
            outs.append(new_output("stream", name="stdout",
                                   text=f"\n[output stopped: the notebook printed more than {self.max_output_mib} MiB]\n"))
        return None


class KernelInAdvance:
    """A sandboxed kernel started before its notebook is known, with the settings SandboxedExecute
    would use (`config`), importing SandboxedExecute.preload_modules while it waits. Its `km` goes
    to SandboxedExecute.preprocess, for a notebook whose kernelspec has the same name."""

    def __init__(self, config, kernel_name="python3"):
        from jupyter_client.blocking import BlockingKernelClient
        from nbclient.util import run_sync
        from nbgrader.utils import setenv

        execute = SandboxedExecute(config=config)
        self.kernel_name = kernel_name
        self.km = SandboxedKernelManager(kernel_name=kernel_name, config=config)
        with setenv(NBGRADER_EXECUTION="autograde"):  # as in a grading run
            run_sync(self.km.start_kernel)(extra_arguments=[*execute.extra_arguments,
                                                            f"--HistoryManager.hist_file={execute.ipython_hist_file}"])
        self.client = BlockingKernelClient()
        try:
            self.client.load_connection_info(self.km.get_connection_info())
            self.client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
            if execute.preload_modules:  # queued: the kernel runs it once it is up
                self.client.execute(f"[__import__(name) for name in {list(execute.preload_modules)!r}]",
                                    silent=True, store_history=False)
        except Exception:
            self.close()
            raise

    def fits(self, nb):
        return (nb.metadata.get("kernelspec", {}).get("name") or "python3") == self.kernel_name

    def close(self):
        """Stop the kernel if no notebook ran in it (SandboxedExecute stops those it ran)."""
        from nbclient.util import run_sync
        try:
            self.client.stop_channels()
            if self.km.has_kernel:
                run_sync(self.km.shutdown_kernel)(now=True)
        except Exception:  # already gone (a notebook that killed its kernel): nothing to stop
            pass


def mark_unrun_cells(nb, reason):
    """Give every code cell that did not run an error output, so that its tests score 0."""
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.get("execution_count") is None and not cell.get("outputs"):
            cell.outputs = [error_output("NotRun", reason)]


def error_output(ename, reason):
    """An error output that fails the cell's tests and tells the student why."""
    return new_output("error", ename=ename, evalue=reason, traceback=[f"{ename}: {reason}"])
