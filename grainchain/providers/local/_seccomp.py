"""The seccomp filter of isolated local sandboxes: Docker's default profile, built with libseccomp.

Docker's default profile (moby/profiles/seccomp/default.json) is an allow-list: every system call not named
below fails with EPERM. The list is Docker's for a container with the capabilities a local sandbox keeps
(grainchain/providers/local/_isolation.py KEPT_CAPABILITIES: chroot yes; mount, namespaces, modules, kexec, bpf, perf,
keyrings, clock setting, reboot ... no), plus `setns`, which nsenter needs to join a sandbox (the kernel
still demands CAP_SYS_ADMIN for it, which no sandboxed process has). `clone` is allowed without namespace
flags only, `clone3` answers ENOSYS (libc then falls back to clone, whose flags the filter can see),
`personality` takes Docker's five values, `socket` everything but AF_VSOCK.

The program is compiled once per process through libseccomp (ctypes; the shared library every Debian and
Ubuntu system has, apt depends on it) for the native architecture and its 32-bit siblings (x86 and x32 on
x86_64, arm on aarch64: a 32-bit binary must not dodge the filter through another syscall table). It is
installed two ways: bubblewrap applies it to a sandbox's holder (`--seccomp FD`), and the thread that spawns
a sandbox's commands installs it on itself (`install_on_this_thread`), so that everything it starts
inherits it: seccomp filters are per thread and inherited by every child.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform

PROVIDER = "local"

# Docker's allow-list (default.json, first entry), in its order.
_ALLOWED = """
accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown chown32 clock_adjtime
clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64 clock_nanosleep
clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3 epoll_create
epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2
execve execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir
fchmod fchmodat fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork
fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex
futex_time64 futex_waitv futimesat getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32
getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority
getrandom getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage getsid getsockname
getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr inotify_add_watch inotify_init
inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64
ioprio_get ioprio_set io_setup io_submit io_uring_enter io_uring_register io_uring_setup ipc kill
landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link linkat
listen listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise membarrier
memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect
mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64
mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep
newfstatat _newselect open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc
pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease
pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recv recvfrom
recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr rename renameat renameat2 restart_syscall
rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam
sched_get_priority_max sched_get_priority_min sched_getscheduler sched_rr_get_interval
sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield
seccomp select semctl semget semop semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg
sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid
setpriority setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit
set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32 setxattr shmat shmctl
shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn socketcall socketpair splice
stat stat64 statfs statfs64 statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time
timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64
timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate
truncate64 ugetrlimit umask uname unlink unlinkat utime utimensat utimensat_time64 utimes vfork vmsplice
wait4 waitid waitpid write writev
""".split()  # noqa: SIM905 (a block of names reads and diffs like the profile)
# Docker allows these on kernels >= 4.8 (ptrace can no longer bypass seccomp there); the pid namespace
# keeps them to the sandbox's own processes.
_ALLOWED += ["process_vm_readv", "process_vm_writev", "ptrace"]
# Architecture-specific entries of the profile; names a libseccomp does not know on this machine are skipped.
_ALLOWED += ["arch_prctl", "modify_ldt", "arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2"]
_ALLOWED += ["breakpoint", "cacheflush", "set_tls"]
# For the capabilities a sandbox keeps (CAP_SYS_CHROOT), and for nsenter (see the module doc).
_ALLOWED += ["chroot", "setns"]

_AF_VSOCK = 40
_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)  # Docker's: PER_LINUX and friends, query
_CLONE_NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_SIBLING_ARCHES = {"x86_64": ("x86", "x32"), "aarch64": ("arm",)}

_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_CMP_NE, _SCMP_CMP_EQ, _SCMP_CMP_MASKED_EQ = 1, 4, 7
_SCMP_FLTATR_CTL_NNP = 3
_NR_SCMP_ERROR = -1
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2


def _errno_action(code: int) -> int:
    return 0x00050000 | code  # SCMP_ACT_ERRNO(code)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_cache: dict[str, bytes | str] = {}


def _libseccomp() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp")
    if name is None:
        raise OSError("libseccomp is not installed (Debian/Ubuntu: `apt-get install libseccomp2`)")
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _compile() -> bytes:
    lib = _libseccomp()
    ctx = lib.seccomp_init(_errno_action(errno.EPERM))
    if not ctx:
        raise OSError("seccomp_init failed")
    try:
        for arch in _SIBLING_ARCHES.get(platform.machine(), ()):
            token = lib.seccomp_arch_resolve_name(arch.encode())
            if token and lib.seccomp_arch_add(ctx, token) not in (0, -errno.EEXIST):
                raise OSError(f"seccomp_arch_add({arch}) failed")

        def rule(action: int, name: str, *conditions: tuple[int, int, int, int]) -> None:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number == _NR_SCMP_ERROR:  # unknown to this libseccomp (negative pseudo numbers are fine)
                return
            args = (_ArgCmp * max(1, len(conditions)))(*(_ArgCmp(*c) for c in conditions))
            rc = lib.seccomp_rule_add_array(ctx, action, number, len(conditions), args)
            if rc not in (0, -errno.EEXIST):
                raise OSError(-rc, f"seccomp rule for {name}: {os.strerror(-rc)}")

        for name in _ALLOWED:
            rule(_SCMP_ACT_ALLOW, name)
        rule(_SCMP_ACT_ALLOW, "socket", (0, _SCMP_CMP_NE, _AF_VSOCK, 0))
        for value in _PERSONALITIES:
            rule(_SCMP_ACT_ALLOW, "personality", (0, _SCMP_CMP_EQ, value, 0))
        if platform.machine() not in ("s390", "s390x"):  # s390 swaps clone's first two arguments
            rule(_SCMP_ACT_ALLOW, "clone", (0, _SCMP_CMP_MASKED_EQ, _CLONE_NAMESPACE_FLAGS, 0))
        rule(_errno_action(errno.ENOSYS), "clone3")
        # No no_new_privs from libseccomp: root installs filters with CAP_SYS_ADMIN, and setuid programs in
        # the sandbox keep working as in a Docker container; others set it themselves (install_on_this_thread).
        if lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_NNP, 0) != 0:
            raise OSError("seccomp_attr_set(CTL_NNP) failed")
        read_end, write_end = os.pipe()
        try:
            rc = lib.seccomp_export_bpf(ctx, write_end)
            os.close(write_end)
            write_end = -1
            if rc != 0:
                raise OSError(-rc, f"seccomp_export_bpf: {os.strerror(-rc)}")
            program = b""
            while chunk := os.read(read_end, 65536):
                program += chunk
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)
    finally:
        lib.seccomp_release(ctx)
    return program


def program() -> bytes:
    """The compiled BPF program (an array of struct sock_filter), made once per process. Raises OSError
    (see unavailable()) where it cannot be built."""
    if "program" not in _cache:
        try:
            _cache["program"] = _compile()
        except (OSError, AttributeError) as exc:
            _cache["program"] = str(exc) or type(exc).__name__
    built = _cache["program"]
    if isinstance(built, str):
        raise OSError(built)
    return built


def unavailable() -> str | None:
    """Why sandboxes cannot get the seccomp filter here (None when they can)."""
    try:
        program()
    except OSError as exc:
        return f"no seccomp filter: {exc}"
    return None


def install_on_this_thread() -> None:
    """Install the filter on the calling thread (not the whole process): every process this thread starts
    from now on inherits it. Irreversible for the thread."""
    bpf = program()
    libc = ctypes.CDLL(None, use_errno=True)
    if os.geteuid() != 0 and libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl(NO_NEW_PRIVS): {os.strerror(code)}")
    buffer = ctypes.create_string_buffer(bpf, len(bpf))
    fprog = _SockFprog(len(bpf) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl(SET_SECCOMP): {os.strerror(code)}")
