"""A warm kernel template: one per grader process, inside the grading sandbox, forking a kernel
for each notebook, so that ipykernel, torch and the other preloaded modules are imported once per
worker instead of once per submission.

The template runs as root inside bubblewrap with only the capabilities it needs to build each
kernel's own sandbox. It never runs student code. For each request it forks a supervisor, and the
supervisor forks the kernel, which before any student code runs:
- gets new mount, IPC, network and UTS namespaces, with an empty /tmp and /dev/shm of its own;
- gets its resource limits, its working folder, a clean environment and only /dev/null as stdio;
- drops to an unprivileged uid of its own, with no capabilities, no way to regain any
  (no_new_privs, empty bounding set), and fresh random seeds.
When the kernel ends, or the grader kills the stand-in that represents it, the supervisor kills
every process of the kernel's uid. The template and supervisors are root and not dumpable, so a
kernel cannot trace, signal or read them, and each kernel is a copy-on-write fork: nothing it does
reaches the template or the next kernel.

This file uses the standard library only: the grader runs it by its source (`python -c`), since
nncourse itself is not inside the sandbox.
  serve SOCKET LIFELINE_FD KEEP MODULE...  the template (in the sandbox)
  connect SOCKET PID SECONDS REQUEST       the kernel's stand-in (in the grader, outside the sandbox):
                                           it lives exactly as long as the kernel, and exits with its code

The template's owner is the grader process that started it (LIFELINE_FD is a pipe from it) or,
once that has ended, the one that took it over (a connection that asked {"own": true}). With
KEEP = 0 it ends with its first owner; otherwise it waits KEEP seconds for the next owner, then ends.
"""
import ctypes
import json
import os
import select
import signal
import socket
import sys
import time

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWNET = 0x00020000, 0x04000000, 0x08000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
SIOCSIFFLAGS, IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x8914, 0x1, 0x8, 0x40
LIMITS = {"as": "RLIMIT_AS", "nproc": "RLIMIT_NPROC", "nofile": "RLIMIT_NOFILE", "fsize": "RLIMIT_FSIZE",
          "cpu": "RLIMIT_CPU", "core": "RLIMIT_CORE"}
SETUP_FAILED = 70  # the kernel's exit code when its sandbox could not be set up

libc = ctypes.CDLL(None, use_errno=True)


def check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def serve(path, lifeline, keep, modules):
    import importlib
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # as ipykernel sets it in each kernel
    for name in modules:  # before ipykernel: 0.11 s sooner ready (median of 8 pairs in turn, 7 of 8 sooner)
        try:
            importlib.import_module(name)
        except Exception as err:  # the notebook's own import will say what is wrong
            os.write(2, f"preloading {name}: {type(err).__name__}: {err}\n".encode())
    import ipykernel.kernelapp  # noqa: F401
    import ipykernel.debugger  # noqa: F401  (debugpy: the rest of what a kernel's start imports, 0.07 s each)
    check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".new")
    listener.listen(16)
    import gc
    gc.freeze()  # the collector leaves the imported objects alone: kernels share their pages, not copy them
    # (a gc.collect() first took 0.17 s before the template is ready, for no less private memory per kernel)
    os.rename(path + ".new", path)  # ready
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors and orphans are reaped by the system
    owner, free_since = lifeline, None  # readable (its end) once the owner is gone
    while True:
        watch = [listener] + ([owner] if owner is not None else [])
        ready, _, _ = select.select(watch, [], [], None if owner is not None else 1.0)
        if owner is not None and owner in ready:  # the owner is gone: its kernels' stand-ins end them
            if keep <= 0:  # and so do we, and as PID 1, every kernel with us
                os._exit(0)
            os.close(owner) if isinstance(owner, int) else owner.close()
            owner, free_since = None, time.monotonic()
        if owner is None and time.monotonic() - free_since > keep:
            os._exit(0)
        if listener not in ready:
            continue
        conn, _ = listener.accept()
        try:
            conn.settimeout(10)
            request = json.loads(read_line(conn))
            conn.settimeout(None)
        except (OSError, ValueError):
            conn.close()
            continue
        if request.get("own"):
            conn.sendall(b"owned\n" if owner is None else b"busy\n")
            if owner is None:
                owner = conn
            else:
                conn.close()
            continue
        if os.fork() == 0:
            listener.close()
            os.close(owner) if isinstance(owner, int) else owner.close()
            try:
                supervise(conn, request)
            except BaseException as err:
                os.write(2, f"supervisor {os.getpid()}: {type(err).__name__}: {err}\n".encode())
            finally:
                os._exit(0)
        conn.close()


def read_line(conn):
    """One line from a socket, read without a buffer (a buffer could keep what follows it)."""
    line = b""
    while not line.endswith(b"\n"):
        byte = conn.recv(1)
        if not byte:
            raise OSError("the connection ended before its first line")
        line += byte
    return line.decode()


def supervise(conn, request):
    """Fork the kernel of one request, wait for it or for the stand-in to go, then kill its uid."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    said, report = os.pipe()  # why the kernel's set-up failed, if it did
    pid = os.fork()
    if pid == 0:  # the kernel: it never returns into the supervisor's code
        try:
            os.close(said)
            become_kernel(conn, request, report)
        except BaseException as err:
            os.write(report, f"{type(err).__name__}: {err}".encode())
            os._exit(SETUP_FAILED)
        try:
            os.close(report)
            run_kernel()
        finally:
            os._exit(1)
    os.close(report)
    conn.sendall(f"pid {pid}\n".encode())
    pidfd = os.pidfd_open(pid)
    ready, _, _ = select.select([pidfd, conn], [], [])
    if pidfd not in ready:  # the stand-in was killed: stop the kernel now
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    failed = os.read(said, 4096).decode(errors="replace")
    if failed:
        os.write(2, f"kernel set-up failed: {failed}\n".encode())  # the template's log
    kill_uid(request["uid"])
    try:
        conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
    except OSError:
        pass


def kill_uid(uid):
    """Kill every process of `uid` (those a student's kernel left behind), as that uid: then
    kill(-1) reaches exactly its processes. Repeated until none is alive (they may fork meanwhile)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            if any(capabilities().values()):
                os._exit(1)  # never kill(-1) with capabilities: it would reach every process
            deadline = time.time() + 10
            while time.time() < deadline:
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    os._exit(0)
                if alive_processes_of(uid) == [os.getpid()]:  # kill(-1) also counts the dead, until reaped
                    os._exit(0)
                time.sleep(0.005)
        finally:
            os._exit(1)
    os.waitpid(pid, 0)


def alive_processes_of(uid):
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = open(f"/proc/{name}/status").read()
        except OSError:
            continue
        if int(status.split("Uid:")[1].split()[0]) == uid and "\nState:\tZ" not in status:
            found.append(int(name))
    return found


def capabilities(names=("CapPrm", "CapEff")):
    status = open("/proc/self/status").read()
    return {name: int(status.split(name + ":")[1].split()[0], 16) for name in names}


def become_kernel(conn, r, report):
    """In the forked kernel, before any student code: its own sandbox, then an unprivileged uid."""
    os.setsid()
    check(libc.unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWUTS), "unshare")
    check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    for place, mib in (("/tmp", r["tmp_mib"]), ("/dev/shm", r["shm_mib"])):
        empty_tmpfs(place, mib)
    import fcntl
    import struct
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # loopback up, as bubblewrap leaves it
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING))
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    conn.close()
    os.closerange(3, report)  # the template's log, the listener and the lifeline are gone
    os.closerange(report + 1, 65536)
    try:
        with open("/proc/self/oom_score_adj", "w") as adj:  # the OOM killer's first choice; cannot be lowered again
            adj.write(str(r["oom_score_adj"]))
    except OSError:
        pass  # as in a sandbox of its own (memgroup.join_command)
    import resource
    for name, value in r["limits"].items():
        resource.setrlimit(getattr(resource, LIMITS[name]), (value, value))
    uid = r["uid"]
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:  # EINVAL: no such cap
            check(-1, f"prctl(PR_CAPBSET_DROP, {cap})")
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # clears the effective and permitted sets
    header, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()  # capset v3, all sets empty
    check(libc.capset(header, data), "capset")  # the inheritable set that bubblewrap gave
    kept = {k: v for k, v in capabilities(("CapPrm", "CapEff", "CapBnd", "CapInh", "CapAmb")).items() if v}
    if kept:
        raise PermissionError(f"the kernel kept capabilities {kept}")
    check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")  # as any process of its own
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")  # after setresuid
    os.chdir(r["cwd"])
    os.environ.clear()
    os.environ.update(r["env"])
    if "numpy.random" in sys.modules:  # Python's own `random` reseeds itself in a forked child
        sys.modules["numpy.random"].seed()
    sys.argv = ["ipykernel_launcher", *r["args"]]


def empty_tmpfs(place, mib):
    """Mount an empty tmpfs of the kernel's own on `place`, then bind again at their own paths the
    mounts that were below it (a virtualenv under /tmp, say), read-only where they were."""
    below = []
    for line in open("/proc/self/mountinfo"):
        fields = line.split()
        point = fields[4].encode().decode("unicode_escape")  # octal escapes such as \040
        if point.startswith(place + "/") and not any(point.startswith(p + "/") for p, _ in below):
            below.append((point, "ro" in fields[5].split(",")))
    held = [(point, ro, os.open(point, os.O_PATH)) for point, ro in below]
    check(libc.mount(b"tmpfs", place.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, f"size={mib}m,mode=1777".encode()),
          f"mount tmpfs {place}")
    for point, ro, fd in held:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(point, mode=0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(point), mode=0o755, exist_ok=True)
            open(point, "a").close()
        check(libc.mount(f"/proc/self/fd/{fd}".encode(), point.encode(), None, MS_BIND | MS_REC, None), f"bind {point}")
        if ro:
            check(libc.mount(None, point.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None),
                  f"remount {point} read-only")
        os.close(fd)


def run_kernel():
    code = 0
    try:
        from ipykernel import kernelapp
        kernelapp.launch_new_instance()
    except SystemExit as end:
        code = end.code if isinstance(end.code, int) else 1
    except BaseException:
        code = 1
    os._exit(code)


def connect(path, template_pid, start_seconds, request):
    """The kernel's stand-in in the grader: wait for the template to be ready, ask it for the
    kernel, then wait until the kernel ends."""
    deadline = time.time() + float(start_seconds)
    while not os.path.exists(path):
        try:
            os.kill(int(template_pid), 0)
        except ProcessLookupError:
            sys.exit("the kernel template stopped before it was ready; its log says why")
        if time.time() > deadline:
            sys.exit(f"the kernel template was not ready after {start_seconds} s")
        time.sleep(0.01)
    grader = os.getppid()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(request.encode() + b"\n")
        while True:
            if not select.select([s], [], [], 1.0)[0]:
                if os.getppid() != grader:  # the grader is gone: so are we, and the supervisor ends the kernel
                    sys.exit(1)
                continue
            try:
                line = read_line(s)
            except OSError:
                sys.exit(1)  # the template went away
            kind, value = line.split()
            if kind == "exit":
                code = int(value)
                sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "serve":
        serve(rest[0], int(rest[1]), float(rest[2]), rest[3:])
    elif command == "connect":
        connect(*rest)
    else:
        sys.exit(f"unknown command {command!r}")
