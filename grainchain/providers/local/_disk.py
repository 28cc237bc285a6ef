"""The disk quota of local sandboxes (flavour-free; root): a size-limited filesystem per sandbox.

    <state_dir>/local/sandboxes/<id>/disk.img   a sparse ext4 image as big as the limit: the host pays only
                                                 for what is written (freed again on delete: `discard`)
                                    /disk/       its mount point, through a loop device: everything the
                                                 sandbox can write (workspace or overlay upper + work dir,
                                                 /tmp) and its empty root directory
    <state_dir>/local/disk-templates/ext4-<bytes>.img   a formatted empty image per size, copied (only its
                                                 ~200 KiB of metadata) instead of running mkfs per sandbox

A sandbox filling its disk gets ENOSPC; the host's free space drops by at most the limit. The mount also
keeps host paths out of the sandbox's /proc/self/mountinfo: what the sandbox sees is mounted from the root
of this filesystem (`/tmp` on /dev/loopN), not from a directory of the host's state dir. The loop device
detaches itself when the filesystem is unmounted (LO_FLAGS_AUTOCLEAR), so nothing is left to clean up but
the image file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import struct
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from grainchain.errors import ProviderError

PROVIDER = "local"
DEFAULT_LIMIT = 10 * 1024**3  # 10 GiB, as a typical cloud sandbox's disk
MIN_LIMIT = 16 * 1024**2  # ext4 needs room for its journal and metadata
# No resize inode and sparse_super2: ~200 KiB of metadata for 10 GiB instead of ~4 MiB, mkfs in ~4 ms.
# Lazy inode tables and journal: they read as zeros from the sparse image, never written (noinit_itable).
_MKFS = [
    "mkfs.ext4", "-q", "-F", "-m", "0", "-L", "grainchain",
    "-O", "^has_journal,^resize_inode,sparse_super2",
    "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
]  # fmt: skip
_MOUNT_OPTIONS = "discard,noinit_itable"
_MS_NOSUID, _MS_NODEV = 2, 4
_LOOP_CTL_GET_FREE, _LOOP_CONFIGURE = 0x4C82, 0x4C0A
_LOOP_SET_FD, _LOOP_SET_STATUS64 = 0x4C00, 0x4C04
_LO_FLAGS_AUTOCLEAR = 4
_LOOP_INFO64_SIZE, _LO_FLAGS_OFFSET = 232, 52  # struct loop_info64
_libc = ctypes.CDLL(None, use_errno=True)
_probe_cache: dict[str, str | None] = {}


def unavailable(state_dir: Path) -> str | None:
    """Why sandboxes under this state dir cannot get a disk quota (None when they can). Probed once per
    state dir by making, mounting and unmounting a small one."""
    key = str(state_dir)
    if key in _probe_cache:
        return _probe_cache[key]
    reason: str | None = None
    if os.geteuid() != 0:
        reason = "a disk quota needs root (loop devices and mounts)"
    elif shutil.which(_MKFS[0]) is None:
        reason = "mkfs.ext4 not found (e2fsprogs)"
    elif not os.path.exists("/dev/loop-control"):
        reason = "no loop devices here (/dev/loop-control is missing)"
    else:
        base = state_dir / "local"
        base.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(prefix=".disk-probe-", dir=base))
        try:
            create(state_dir, probe / "disk.img", probe / "disk", MIN_LIMIT)
            unmount(probe / "disk")
        except (OSError, ProviderError) as exc:
            reason = f"cannot mount a loop filesystem here: {exc}"
        finally:
            with contextlib.suppress(OSError):
                unmount(probe / "disk")
            shutil.rmtree(probe, ignore_errors=True)
    _probe_cache[key] = reason
    return reason


def _template(state_dir: Path, size: int) -> Path:
    """The formatted empty image of `size` bytes, made once (atomically: a half-written one is never seen)."""
    templates = state_dir / "local" / "disk-templates"
    path = templates / f"ext4-{size}.img"
    if path.exists():
        return path
    templates.mkdir(parents=True, exist_ok=True)
    staging = templates / f".staging-{uuid.uuid4().hex}"
    try:
        with open(staging, "wb") as f:
            f.truncate(size)
        done = subprocess.run([*_MKFS, str(staging)], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise ProviderError(
                f"mkfs.ext4 failed for the sandbox's disk: {done.stderr.strip()}", provider=PROVIDER
            )
        staging.replace(path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def _sparse_copy(source: Path, target: Path) -> None:
    """Copy only the data extents of `source` (its holes stay holes in `target`)."""
    with open(source, "rb") as src, open(target, "xb") as dst:
        size = os.fstat(src.fileno()).st_size
        os.ftruncate(dst.fileno(), size)
        offset = 0
        while offset < size:
            try:
                start = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            position = start
            while position < end:
                position += os.copy_file_range(src.fileno(), dst.fileno(), end - position, position, position)
            offset = end


def _attached(image: Path) -> str | None:
    """The loop device still backed by `image`, if any."""
    target = str(image.resolve())
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            if backing.read_text().strip() == target:
                return f"/dev/{backing.parent.parent.name}"
    return None


def _attach(image: Path) -> tuple[int, str]:
    """A free loop device backed by `image`, detaching itself once unused: (open fd of it, its path)."""
    with open(image, "r+b") as backing:
        for _ in range(20):  # another process may take the free device first
            control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
            try:
                number = fcntl.ioctl(control, _LOOP_CTL_GET_FREE)
            finally:
                os.close(control)
            device = f"/dev/loop{number}"
            loop = os.open(device, os.O_RDWR | os.O_CLOEXEC)
            info = bytearray(_LOOP_INFO64_SIZE)
            struct.pack_into("I", info, _LO_FLAGS_OFFSET, _LO_FLAGS_AUTOCLEAR)
            try:
                try:
                    config = struct.pack("II", backing.fileno(), 0) + bytes(info) + bytes(64)
                    fcntl.ioctl(loop, _LOOP_CONFIGURE, config)
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.ENOTTY):  # a kernel before 5.8
                        raise
                    fcntl.ioctl(loop, _LOOP_SET_FD, backing.fileno())
                    fcntl.ioctl(loop, _LOOP_SET_STATUS64, bytes(info))
            except OSError as exc:
                os.close(loop)
                if exc.errno == errno.EBUSY:
                    time.sleep(0.001)
                    continue
                raise
            return loop, device
    raise ProviderError("no free loop device for the sandbox's disk", provider=PROVIDER, retryable=True)


def mount(image: Path, mount_point: Path) -> None:
    """Mount the sandbox's disk image (again: mounts do not survive a reboot); no-op when mounted."""
    if os.path.ismount(mount_point):
        return
    # A disk detached lazily (something still held it at close) lives on on its loop device: mount that
    # device again, which gives back the same filesystem. A second loop device on the image would read
    # the image file's stale page cache: files written before the close would be missing.
    device = _attached(image)
    if device is None:
        _mount(*_attach(image), mount_point)
    else:
        _mount(os.open(device, os.O_RDWR | os.O_CLOEXEC), device, mount_point)


def _mount(loop: int, device: str, mount_point: Path) -> None:
    """Mount the loop device (`loop`: an open fd of it, closed here) at `mount_point`."""
    try:
        mount_point.mkdir(mode=0o700, exist_ok=True)
        flags = _MS_NOSUID | _MS_NODEV
        if _libc.mount(device.encode(), str(mount_point).encode(), b"ext4", flags, _MOUNT_OPTIONS.encode()):
            code = ctypes.get_errno()
            raise OSError(code, f"mount {device} on {mount_point}: {os.strerror(code)}")
    finally:
        os.close(loop)  # the mount holds the device now; autoclear detaches it at unmount


def create(state_dir: Path, image: Path, mount_point: Path, size: int) -> None:
    """A new disk of `size` bytes for a sandbox, mounted at `mount_point` (root-owned, mode 0700)."""
    _sparse_copy(_template(state_dir, size), image)
    _mount(*_attach(image), mount_point)  # a new image: no loop device to look for (a scan of them all)
    os.chmod(mount_point, 0o700)
    with contextlib.suppress(OSError):  # no use for it: the sandbox never sees the disk's root
        os.rmdir(mount_point / "lost+found")


def unmount(mount_point: Path) -> None:
    """Unmount the disk; lazily (MNT_DETACH) when something still holds it, e.g. a process being killed."""
    if _libc.umount2(str(mount_point).encode(), 0) == 0:
        return
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOENT):  # not mounted
        return
    if _libc.umount2(str(mount_point).encode(), 2) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"umount {mount_point}: {os.strerror(code)}")
