"""Run untrusted Python programs (a prompt + a model's completion + the benchmark's tests) in a
sandbox: one fresh process per program, killed at its limits, cleaned up afterwards.

    >>> from pasture.eval.sandbox import run_program, run_programs, Limits
    >>> run_program("assert sorted([2, 1]) == [1, 2]").status
    'passed'
    >>> [r.status for r in run_programs(["assert False", "while True: pass"], Limits(timeout_s=2))]
    ['failed', 'timeout']

A program passes only when every statement of it ran (the benchmark's tests come last) and it
then exited with status 0. The sandbox's own runner executes it and, after its last statement,
writes an end marker carrying a random token to a pipe; the token waits unread in another pipe
until then. So ``os._exit(0)`` or ``sys.exit(0)`` before the tests fails, and nothing a program
prints changes its status: "memory" means the runner caught a MemoryError itself. (A program
written to attack the harness could find both pipes among its own descriptors; see RUNNER.)
Each runs as ``python -I -S`` (isolated mode: no PYTHON* variables, no user or site packages, so
it sees the standard library only) with stdin and stdout on /dev/null, stderr in a size-limited
file, and an environment of PATH, HOME, LANG and TMPDIR only. The process is started by this
same file run as a script (the "trampoline"), which puts the limits in place and then replaces
itself with the runner.

How each threat is contained when the harness runs as root (a GPU box, a container):

* Other users' files, processes and privileges: the program runs under its own uid and gid
  (``UID_BASE`` + a slot), no supplementary groups, no capabilities, ``no_new_privs`` (setuid
  binaries give nothing). Each concurrent program has its own uid; a slot is reserved with a
  file lock, so two harnesses on one machine never share one.
* Writes: a new mount namespace (private propagation) in which every mount is remounted
  read-only and nosuid; the working directory is a fresh size-limited tmpfs on ``/tmp`` owned by
  the sandbox uid, which vanishes with the namespace; ``/dev/shm`` and ``/run`` are replaced by
  small private tmpfs (host sockets under ``/run`` are out of sight). The host's copy of every
  mount is untouched. A directory the sandbox uid cannot traverse on the way to the Python
  installation (e.g. pyenv under a 0700 ``/root``) is masked by an empty tmpfs into which only
  the installation is bind-mounted, read-only.
* Network: a new network namespace, which has only a loopback that is down, so nothing can be
  reached, not even 127.0.0.1 of the host. New IPC and UTS namespaces (SysV shared memory cannot
  outlive the program).
* Processes: RLIMIT_NPROC (enforced because the uid is not 0, and counted for this sample's
  uid alone). After the program ends or times out its process group is killed, and then every
  process of its uid (``kill(-1, SIGKILL)`` sent as that uid), so a child that escaped with
  setsid() or a daemon dies too.
* Time: RLIMIT_CPU (SIGXCPU, then SIGKILL one second later) and a wall-clock limit.
* Memory: RLIMIT_AS per process (so at most ``max_processes`` × ``memory_bytes`` in all);
  file size: RLIMIT_FSIZE; core dumps off; open files: RLIMIT_NOFILE.

Everywhere, where the kernel allows (no privilege needed, so also in containers): Landlock
lets the program create, change or remove files only in its working directory (and write
/dev/null), and, with Landlock ABI 6, send signals or reach abstract unix sockets only inside the
sandbox; a seccomp filter makes ``socket()`` and ``io_uring_setup()`` fail (``socketpair()``
stays: a local pair reaches nothing), whichever way they are called, ctypes included.

Root without CAP_SYS_ADMIN (Docker's default profile): no namespaces, so the program sees the
host's filesystem with its own uid's rights and works in a host temporary directory (removed
afterwards); Landlock and seccomp (above) keep it from the network and from writing anywhere
else. The uid, the rlimits and the kill by uid hold as above. A Python installation the sandbox
uid cannot reach (pyenv under a 0700 /root) cannot be revealed without a mount namespace, so
the programs then run on the system's ``/usr/bin/python3``.

Not root: the same rlimits (RLIMIT_NPROC then counts every process of the user, so the limit is
set to what the user already runs plus ``max_processes``); a user namespace brings the network,
IPC and mount namespaces and the read-only view where the kernel allows unprivileged user
namespaces; else Landlock and seccomp as above, and the working directory is a host temporary
directory. Only the process group is killed at the end, so a child that called setsid()
survives.

``uncontained(layers)`` says what a program could still reach: the network unless a network
namespace or the seccomp filter held, writes outside its working directory unless the
read-only view or Landlock held. Code tasks refuse to run where either is missing unless the
user passes ``allow_uncontained_code`` (``--allow-uncontained-code``).

Every result lists the layers that held (``layers``); ``containment()`` measures them once.
Not contained anywhere: reading world-readable files, the process list in /proc (no PID
namespace), and CPU time and total memory shared with the host (there is no cgroup). Without a
mount namespace, the total size of the working directory is not capped (each file is, by
RLIMIT_FSIZE).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

UID_BASE = 1_950_000_000  # far above any login uid; UID_SLOTS uids from here are the sandbox's
UID_SLOTS = 1024
STATUSES = ("passed", "failed", "timeout", "memory", "error")
PROGRAM = "program.py"
# The interpreter the programs run on: the base installation, not a virtualenv (-S ignores it).
PYTHON = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")  # where PYTHON is out of reach


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock
    cpu_s: float | None = None  # CPU seconds; None: timeout_s
    memory_bytes: int = 1 << 30  # address space of each process
    max_processes: int = 4  # processes and threads, the program's own included
    file_bytes: int = 16 << 20  # largest file written (stderr included)
    disk_bytes: int = 64 << 20  # the working directory's tmpfs
    open_files: int = 256
    stderr_chars: int = 2000  # how much of stderr's tail a result keeps


@dataclass(frozen=True)
class SandboxResult:
    status: str  # one of STATUSES
    stderr: str  # the tail of the program's stderr, or why the sandbox could not start it
    returncode: int | None
    elapsed_s: float
    layers: tuple[str, ...] = ()  # the containment that held for this run

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_program(program: str, limits: Limits | None = None) -> SandboxResult:
    """Run one program in a fresh sandboxed process and classify how it ended."""
    limits = limits or Limits()
    start = time.monotonic()
    temporary = tempfile.TemporaryDirectory(prefix="pasture-sandbox-", ignore_cleanup_errors=True)
    with temporary as tmp, _uid_slot() as uid:  # leftover processes die before files go
        host = Path(tmp)
        (host / PROGRAM).write_text(program, encoding="utf-8", errors="replace")
        workdir = host / "work"  # used only where no private tmpfs can be mounted
        workdir.mkdir()
        if uid is not None:
            os.chmod(host, 0o711)
            os.chown(workdir, uid, uid)
        config = {
            "program": str(host / PROGRAM),
            "workdir": str(workdir),
            "uid": uid,
            "limits": asdict(limits),
            "reveal": sorted({sys.base_prefix, sys.base_exec_prefix, os.path.dirname(PYTHON)}),
        }
        status_read, status_write = os.pipe()  # the trampoline's report, closed by exec
        marker_read, marker_write = os.pipe()  # the runner's end marker, after the tests
        token_read, token_write = os.pipe()  # the marker's secret, read only after the tests
        token = secrets.token_hex(16)
        os.write(token_write, token.encode())
        os.close(token_write)
        os.set_blocking(marker_read, False)  # an escaped child may hold the write end open
        config["status_fd"], config["marker_fd"], config["token_fd"] = (
            status_write,
            marker_write,
            token_read,
        )
        killed = False
        with open(host / "stderr.txt", "wb") as stderr:
            try:
                process = subprocess.Popen(
                    [PYTHON, "-I", "-S", os.path.abspath(__file__), json.dumps(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    env=_environment(str(workdir)),
                    cwd=host,
                    start_new_session=True,
                    pass_fds=(status_write, marker_write, token_read),
                )
            except OSError as e:  # e.g. no process slot left on the host
                os.close(status_read)
                os.close(marker_read)
                return SandboxResult("error", f"cannot start: {e}", None, 0.0)
            finally:
                for fd in (status_write, marker_write, token_read):
                    os.close(fd)
            try:
                returncode = process.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                killed = True
                _kill_group(process.pid)
                returncode = process.wait()
        _kill_group(process.pid)
        message = _read_all(status_read)
        ending = _read_available(marker_read)
        tail = _tail(host / "stderr.txt", limits.stderr_chars)
    elapsed = time.monotonic() - start
    layers: tuple[str, ...] = ()
    for line in message.splitlines():
        if line.startswith("layers "):
            layers = tuple(line.split()[1].split(","))
        elif line.startswith("error "):
            return SandboxResult("error", line[len("error ") :], returncode, elapsed, layers)
    status = _classify(returncode, killed, elapsed, _ending(ending, token), limits)
    return SandboxResult(status, tail, returncode, elapsed, layers)


def run_programs(
    programs: Sequence[str], limits: Limits | None = None, workers: int | None = None
) -> list[SandboxResult]:
    """Run many programs, at most ``workers`` at a time (default: one per CPU), in order."""
    from concurrent.futures import ThreadPoolExecutor

    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_program(p, limits), programs))


def containment() -> tuple[str, ...]:
    """The layers that hold on this machine, measured by running an empty program."""
    result = run_program("pass", Limits(timeout_s=30))
    if result.status == "error":
        raise RuntimeError(f"the sandbox cannot start a program here: {result.stderr}")
    return result.layers


def _ending(lines: str, token: str) -> str | None:
    """How the runner saw the program end: "end" (every statement ran, tests included), the
    name of the exception that stopped it, or None (it never got there: os._exit, a signal).
    Only lines carrying this run's token count; the program never sees the token."""
    endings = [line.split()[:-1] for line in lines.splitlines() if line.endswith(" " + token)]
    if ["end"] in endings:
        return "end"
    raised = [e[1] for e in endings if len(e) == 2 and e[0] == "raised"]
    return raised[0] if raised else None


def _classify(
    returncode: int, killed: bool, elapsed: float, ending: str | None, limits: Limits
) -> str:
    if killed or returncode == -signal.SIGXCPU:
        return "timeout"
    if ending == "end" and returncode == 0:
        return "passed"
    if ending == "MemoryError":
        return "memory"
    if returncode == -signal.SIGKILL and elapsed >= (limits.cpu_s or limits.timeout_s):
        return "timeout"  # the hard CPU limit
    return "failed"


def _environment(workdir: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }


def _read_all(fd: int) -> str:
    with os.fdopen(fd, "rb") as f:
        return f.read().decode("utf-8", "replace")


def _read_available(fd: int, most: int = 1 << 16) -> str:
    """What is in a non-blocking pipe now; the writers may still hold it open."""
    chunks = []
    with os.fdopen(fd, "rb", buffering=0) as f:
        while sum(map(len, chunks)) < most:
            chunk = f.read(most)
            if not chunk:  # None: empty for now; b"": closed
                break
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _tail(path: Path, chars: int) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4 * chars))
        return f.read().decode("utf-8", "replace")[-chars:]


def _kill_group(pid: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# -- per-sample uids (root) -----------------------------------------------------------------


@contextmanager
def _uid_slot() -> Iterator[int | None]:
    """A uid no other sample, here or in another harness on this machine, is using; None when
    not root. Every process left under it is killed before and after the sample."""
    if os.geteuid() != 0:
        yield None
        return
    import fcntl
    import pwd

    locks = Path(tempfile.gettempdir()) / "pasture-sandbox-uids"
    locks.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(locks)
    if info.st_uid != 0 or not os.path.isdir(locks) or os.path.islink(locks):
        raise RuntimeError(f"{locks}: must be a directory owned by root")
    for uid in range(UID_BASE, UID_BASE + UID_SLOTS):
        try:
            pwd.getpwuid(uid)
            continue  # a real account: never ours
        except KeyError:
            pass
        fd = os.open(locks / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        running, zombies = tasks_of(uid)
        if running or zombies:  # left by a killed harness, or orphans init has yet to reap
            _kill_user(uid)
            os.close(fd)
            continue
        try:
            yield uid
        finally:
            _kill_user(uid)
            os.close(fd)
        return
    raise RuntimeError(f"all {UID_SLOTS} sandbox uids from {UID_BASE} are in use")


def tasks_of(uid: int) -> tuple[int, int]:
    """Threads of real uid ``uid``: (running, zombies). RLIMIT_NPROC counts both: a zombie
    holds its slot until its parent (or init, for an orphan) reaps it."""
    running = zombies = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as f:
                lines = f.read().splitlines()
        except OSError:  # gone meanwhile
            continue
        fields = dict(line.split(b":", 1) for line in lines if b":" in line)
        if int(fields[b"Uid"].split()[0]) != uid:
            continue
        if fields[b"State"].split()[:1] == [b"Z"]:
            zombies += 1
        else:
            running += int(fields[b"Threads"])
    return running, zombies


def _kill_user(uid: int) -> None:
    """SIGKILL every process of ``uid``, sent as that uid: kill(-1) reaches exactly its own
    processes, all at once, so a fork bomb cannot outrun it. (Their zombies wait for init; a
    slot is not reused until they are gone.)"""
    for _ in range(100):
        if not tasks_of(uid)[0]:
            return
        subprocess.run(
            [PYTHON, "-I", "-S", os.path.abspath(__file__), "--kill-uid", str(uid)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={},
            cwd="/",
            check=False,
        )
    raise RuntimeError(f"processes of sandbox uid {uid} survive SIGKILL")


# -- the trampoline: runs as a script in the new process, then becomes the program ----------

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
# Runs in the sandboxed interpreter: the program, then (only if every statement ran, the
# benchmark's tests last) "end TOKEN" on the marker pipe. The token waits unread in its own pipe
# until then, so an early os._exit(0), sys.exit(0) or a forged line on stdout/stderr never
# passes. A program written to attack the harness can still find both pipes among its own open
# files: this stops accidents and cheap tricks, not a targeted forgery.
RUNNER = """\
import os, sys
_marker, _token = int(sys.argv[1]), int(sys.argv[2])
sys.argv[:] = ["program.py"]
def _end(outcome):
    os.write(_marker, outcome + b" " + os.read(_token, 64) + b"\\n")
try:
    import runpy
    runpy.run_path("program.py", run_name="__main__")
except BaseException as _e:
    _end(b"raised " + type(_e).__name__.encode())
    import traceback
    traceback.print_exc()
    os._exit(1)
_end(b"end")
"""


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_char_p,
    ]
    return libc


def _check(result: int, what: str) -> None:
    if result != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(
    libc, source: str | None, target: str, fstype: str | None, flags: int, data: str = ""
) -> None:
    encode = lambda s: s.encode() if s is not None else None  # noqa: E731
    result = libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data))
    _check(result, f"mount {target}")


def _mount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            points.append(point.encode().decode("unicode_escape"))  # \040 is a space
    return sorted(set(points), key=lambda p: p.count("/"))


def _read_only_view(libc, uid: int | None, limits: dict, reveal: list[str]) -> list[str]:
    """In this process's own mount namespace: a private tmpfs on /tmp (the working directory),
    every other mount read-only and nosuid, /dev/shm and /run masked. Raises only while nothing
    has changed yet; returns the layers that held."""
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    existing = _mount_points()
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    workdir = f"size={limits['disk_bytes']},mode=0700{owner}"
    _mount(libc, "tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, workdir)
    layers = ["private-tmpfs"]
    masked = ["/tmp"]
    for target, options in [("/dev/shm", "mode=1777,size=1m"), ("/run", "mode=0755,size=64k")]:
        if os.path.isdir(target) and not os.path.islink(target):
            with suppress(OSError):
                _mount(libc, "tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options)
                masked.append(target)
    for point in existing:
        if any(point == m or point.startswith(m + "/") for m in masked):
            continue  # covered: remounting the path would reach our tmpfs instead
        try:
            kept = os.statvfs(point).f_flag & (MS_NODEV | MS_NOEXEC)
            _mount(libc, None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | kept)
            if point == "/":
                layers.append("read-only-filesystem")
        except OSError:
            pass  # e.g. a mount hidden under another one
    with suppress(OSError):  # without it the program cannot start, which the result says
        _reveal(libc, reveal)
    return layers


def _reveal(libc, paths: list[str]) -> None:
    """Make each path reachable by anyone: the highest directory on its way that others cannot
    traverse is covered by an empty tmpfs holding a read-only bind of the path alone."""
    import stat

    covered: set[str] = set()
    for path in paths:
        parts = Path(path).parts
        for i in range(2, len(parts) + 1):
            ancestor = str(Path(*parts[:i]))
            if not os.stat(ancestor).st_mode & stat.S_IXOTH:
                break
        else:
            continue
        held = os.open(path, os.O_PATH | os.O_DIRECTORY)
        if ancestor not in covered:
            _mount(libc, "tmpfs", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
            covered.add(ancestor)
        os.makedirs(path, mode=0o755, exist_ok=True)
        _mount(libc, f"/proc/self/fd/{held}", path, None, MS_BIND | MS_REC)
        _mount(libc, None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
        os.close(held)
    for ancestor in covered:
        _mount(libc, None, ancestor, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)


# -- seccomp and Landlock: need no privilege (only no_new_privs), so they hold in containers
# without CAP_SYS_ADMIN too

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
SYSCALLS = {  # the generic table (aarch64) differs from x86_64's for the old calls
    "x86_64": {"socket": 41, "io_uring_setup": 425, "landlock_create_ruleset": 444},
    "aarch64": {"socket": 198, "io_uring_setup": 425, "landlock_create_ruleset": 444},
}
# io_uring can open and connect sockets itself (IORING_OP_SOCKET); socketpair() stays allowed:
# an unconnected local pair reaches nothing.
SOCKET_SYSCALLS = ("socket", "io_uring_setup")
LANDLOCK_WRITES = (  # LANDLOCK_ACCESS_FS_* that create, change or remove, by ABI version
    (1, sum(1 << bit for bit in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12))),  # WRITE_FILE, REMOVE_*, MAKE_*
    (2, 1 << 13),  # REFER: rename or link across directories
    (3, 1 << 14),  # TRUNCATE
)
LANDLOCK_FILE_WRITES = (1 << 1) | (1 << 14)  # WRITE_FILE, TRUNCATE: what a file rule may hold
LANDLOCK_SCOPES = (6, (1 << 0) | (1 << 1))  # abstract unix sockets and signals outside


def _seccomp(libc, names: Sequence[str], errno: int = 1) -> bool:
    """Make the named system calls fail with ``errno`` (EPERM) for this process and whatever it
    executes; calls of another ABI (x32, i386 on x86_64) fail likewise, since their numbers
    differ. False where the machine or kernel doesn't allow it."""
    import ctypes

    machine = os.uname().machine
    if machine not in AUDIT_ARCH:
        return False
    numbers = [SYSCALLS[machine][name] for name in names]
    deny, allow = 0x00050000 | errno, 0x7FFF0000  # SECCOMP_RET_ERRNO | errno, SECCOMP_RET_ALLOW
    load, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, JMP|JEQ|K, JMP|JGE|K, RET|K
    checks = [(jge, 0x40000000)] if machine == "x86_64" else []  # the x32 ABI's bit
    checks += [(jeq, n) for n in numbers]
    to_deny = len(checks) + 1  # instructions from the one after a check to the deny
    program = [(load, 0, 0, 4), (jeq, 0, len(checks) + 2, AUDIT_ARCH[machine]), (load, 0, 0, 0)]
    program += [(op, to_deny - i - 1, 0, k) for i, (op, k) in enumerate(checks)]
    program += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    code = b"".join(struct.pack("=HBBI", *instruction) for instruction in program)
    filters = ctypes.create_string_buffer(code)
    fprog = struct.pack("@HP", len(program), ctypes.addressof(filters))  # struct sock_fprog
    zero = ctypes.c_ulong(0)
    # prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog)
    return libc.prctl(22, ctypes.c_ulong(2), fprog, zero, zero) == 0


def _landlock(libc, workdir: str) -> list[str]:
    """Landlock: from now on this process and what it executes may create, change or remove
    files only under ``workdir`` (and write /dev/null); where the kernel has ABI 6, signals and
    abstract unix sockets stop at the sandbox too. [] where Landlock is absent or refused."""
    import ctypes

    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    number = SYSCALLS.get(os.uname().machine, {}).get("landlock_create_ruleset")
    if number is None:
        return []
    abi = syscall(ctypes.c_long(number), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return []
    handled = sum(bits for version, bits in LANDLOCK_WRITES if abi >= version)
    scoped = LANDLOCK_SCOPES[1] if abi >= LANDLOCK_SCOPES[0] else 0
    attr = struct.pack("=QQQ", handled, 0, scoped) if scoped else struct.pack("=Q", handled)
    ruleset = syscall(ctypes.c_long(number), attr, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        return []
    try:
        for path, allowed in [(workdir, handled), ("/dev/null", handled & LANDLOCK_FILE_WRITES)]:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = struct.pack("=Qi", allowed, fd)  # landlock_path_beneath_attr, packed
                # landlock_add_rule(ruleset, LANDLOCK_RULE_PATH_BENEATH, &rule, 0)
                if syscall(ctypes.c_long(number + 1), ctypes.c_int(ruleset), 1, rule, 0) != 0:
                    return []
            finally:
                os.close(fd)
        if syscall(ctypes.c_long(number + 2), ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            return []  # landlock_restrict_self
    finally:
        os.close(ruleset)
    return ["landlock-writes"] + (["landlock-signals"] if scoped else [])


def uncontained(layers: Sequence[str]) -> list[str]:
    """What a program run with these layers can reach on the host: [] when network access and
    writes outside its working directory are both contained."""
    missing = []
    if not {"network-namespace", "seccomp-no-sockets"} & set(layers):
        missing.append("the network")
    if "landlock-writes" not in layers and not {"private-tmpfs", "read-only-filesystem"} <= set(
        layers
    ):
        missing.append("writes outside its working directory (/tmp, /var/tmp, /dev/shm, ...)")
    return missing


def _set_limits(limits: dict, uid: int | None) -> None:
    import math
    import resource

    cpu = math.ceil(limits["cpu_s"] or limits["timeout_s"])
    processes = limits["max_processes"]
    if uid is None:  # RLIMIT_NPROC counts every process of this user, ours included
        processes += sum(tasks_of(os.getuid()))
    for name, value in [
        ("RLIMIT_CPU", (cpu, cpu + 1)),
        ("RLIMIT_AS", (limits["memory_bytes"],) * 2),
        ("RLIMIT_FSIZE", (limits["file_bytes"],) * 2),
        ("RLIMIT_NOFILE", (limits["open_files"],) * 2),
        ("RLIMIT_CORE", (0, 0)),
        ("RLIMIT_NPROC", (processes,) * 2),
    ]:
        resource.setrlimit(getattr(resource, name), value)


def _enter(config: dict) -> tuple[list[str], list[str], str]:
    """Contain this process; returns the layers that hold, the argv to exec and the workdir."""
    libc = _libc()
    os.umask(0o022)
    program = Path(config["program"]).read_bytes()  # before /tmp is covered
    uid: int | None = config["uid"]
    layers: list[str] = []
    spaces = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    if uid is not None:  # needs CAP_SYS_ADMIN, which e.g. Docker's default root lacks
        namespaces = libc.unshare(spaces) == 0
    else:
        own_uid, own_gid = os.getuid(), os.getgid()
        namespaces = libc.unshare(CLONE_NEWUSER | spaces) == 0
        if namespaces:
            layers.append("user-namespace")
            with suppress(OSError):  # keep our ids inside it, where the kernel lets us
                for name, text in [
                    ("setgroups", "deny"),
                    ("uid_map", f"{own_uid} {own_uid} 1"),
                    ("gid_map", f"{own_gid} {own_gid} 1"),
                ]:
                    Path(f"/proc/self/{name}").write_text(text)
    workdir = config["workdir"]
    if namespaces:  # unshare is all or nothing: every mount below is in our own namespace
        layers += ["network-namespace", "ipc-namespace"]
        with suppress(OSError):
            layers += _read_only_view(libc, uid, config["limits"], config["reveal"])
            workdir = "/tmp"
    (Path(workdir) / PROGRAM).write_bytes(program)
    os.chdir(workdir)
    _set_limits(config["limits"], uid)
    layers.append("rlimits")
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        layers.append("own-uid")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(no_new_privs)")
    layers.append("no-new-privs")
    layers += _landlock(libc, workdir)
    if _seccomp(libc, SOCKET_SYSCALLS):
        layers.append("seccomp-no-sockets")
    python = _interpreter(config["reveal"])
    argv = [python, "-I", "-S", "-c", RUNNER, str(config["marker_fd"]), str(config["token_fd"])]
    return layers, argv, workdir


def _interpreter(installation: list[str]) -> str:
    """The harness's own interpreter if this (sandbox) uid can reach it and its library, else
    the system's python3: without a mount namespace nothing can reveal e.g. a pyenv under a
    0700 /root."""
    if all(os.access(path, os.X_OK) for path in [PYTHON, *installation]):
        return PYTHON
    for candidate in SYSTEM_PYTHONS:
        if os.access(candidate, os.X_OK):
            return os.path.realpath(candidate)
    raise PermissionError(
        f"the sandbox uid can reach neither {PYTHON} nor a system python3 "
        f"({', '.join(SYSTEM_PYTHONS)})"
    )


def _trampoline(config: dict) -> None:
    status = config["status_fd"]
    os.set_inheritable(status, False)  # closed by exec: the parent then reads EOF
    try:
        layers, argv, workdir = _enter(config)
        os.write(status, f"layers {','.join(layers)}\n".encode())
        os.execve(argv[0], argv, {**os.environ, "HOME": workdir, "TMPDIR": workdir})
    except Exception as e:  # noqa: BLE001 - any failure here is the sandbox's, not the program's
        os.write(status, f"error {type(e).__name__}: {e}\n".encode())
        os._exit(125)


def _kill_own_processes(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    with suppress(ProcessLookupError):
        os.kill(-1, signal.SIGKILL)


if __name__ == "__main__":
    if sys.argv[1] == "--kill-uid":
        _kill_own_processes(int(sys.argv[2]))
    else:
        _trampoline(json.loads(sys.argv[1]))
