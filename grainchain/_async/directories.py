"""upload_directory / download_directory emulated with what every provider with commands and files has:
a tar (grainchain/_tree.py) sent up as files of at most PART bytes and unpacked by `tar -x` in the sandbox,
or made by `tar -c | split` in the sandbox and fetched part by part. Memory stays at about one part.

Needs `sh`, `tar` (GNU or busybox), `split`, `cat`, `mv` in the sandbox. What the sandbox holds at the end
is all or nothing for an upload: the tree is unpacked into a hidden directory beside the target, which is
renamed onto it (a client killed midway leaves that hidden directory, never half a target).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shlex
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from grainchain import _tree
from grainchain._acompat import arun_blocking
from grainchain._types import LocalPath
from grainchain.errors import FileNotFoundInSandboxError, InvalidArgumentError, ProviderError

if TYPE_CHECKING:
    from grainchain._async.adapter import AsyncSandboxAdapter

PART = 8 * 1024 * 1024
TEMP_PREFIX = ".grainchain-upload-"
DOWNLOAD_PREFIX = ".grainchain-download-"
_TIMEOUT = 3600.0  # one unpack or pack command: a big tree on a slow disk

# $1 the parts' directory, $2 the hidden directory to unpack into, $3 the target
_UNPACK = r"""set -e
mkdir -p -- "$2"
cat "$1"/part-* | tar -x -p --no-same-owner -f - -C "$2"
rm -rf -- "$1"
t=$3
if [ -L "$t" ]; then t=$(readlink -f -- "$t"); fi
if [ -d "$t" ]; then rmdir -- "$t"; fi
mv -- "$2" "$t"
"""
# $1 the source directory, $2 the parts' directory (fails when tar does: its status in $2/status)
_PACK = r"""mkdir -p -- "$2" || exit 1
{ tar -c -f - -C "$1" . 2>"$2/error" || echo $? >"$2/status"; } | split -a 6 -d -b $3 - "$2/part-" || exit 1
[ ! -e "$2/status" ] || { cat "$2/error" >&2; exit 2; }
"""


async def sandbox_target_free(adapter: AsyncSandboxAdapter, sandbox_path: str) -> None:
    """InvalidArgumentError unless sandbox_path is missing or an empty directory (links followed)."""
    if not await adapter.file_exists(sandbox_path):
        return
    info = await adapter.get_file_info(sandbox_path)
    if info.is_symlink or not info.is_directory:
        try:
            await adapter.list_files(sandbox_path)  # a link to a directory lists it
        except (InvalidArgumentError, FileNotFoundInSandboxError):
            raise InvalidArgumentError(
                f"{sandbox_path} exists and is not a directory (a missing or empty one is needed)",
                argument="sandbox_path",
            ) from None
    if await adapter.list_files(sandbox_path):
        raise InvalidArgumentError(
            f"{sandbox_path} is a directory that is not empty (a missing or empty one is needed; "
            "delete_file() it first to replace it)",
            argument="sandbox_path",
        )


async def sandbox_source(adapter: AsyncSandboxAdapter, sandbox_path: str) -> None:
    """FileNotFoundInSandboxError / InvalidArgumentError unless sandbox_path is a directory."""
    info = await adapter.get_file_info(sandbox_path)  # FileNotFoundInSandboxError when missing
    if not info.is_directory:
        try:
            await adapter.list_files(sandbox_path)  # a link to a directory lists it
        except (InvalidArgumentError, FileNotFoundInSandboxError):
            raise InvalidArgumentError(
                f"{sandbox_path} is not a directory", argument="sandbox_path"
            ) from None


async def _run(adapter: AsyncSandboxAdapter, script: str, *args: str) -> None:
    command = "sh -c " + " ".join(shlex.quote(a) for a in (script, "sh", *args))
    result = await adapter.execute(command, timeout=_TIMEOUT)
    if result.return_code != 0:
        raise ProviderError(
            f"the sandbox's tar failed (exit {result.return_code}): {result.stderr.strip()[-500:]}"
        )


def _beside(sandbox_path: str) -> tuple[str, str]:
    """(the target without a trailing slash, a hidden name beside it)."""
    target = posixpath.normpath(sandbox_path)
    parent = posixpath.dirname(target) or "."
    return target, posixpath.join(parent, f"{TEMP_PREFIX}{uuid.uuid4().hex}")


async def upload(adapter: AsyncSandboxAdapter, local_path: LocalPath, sandbox_path: str) -> None:
    fd = _tree.local_source(local_path, "upload_directory")
    try:
        await sandbox_target_free(adapter, sandbox_path)
        target, hidden = _beside(sandbox_path)
        parts = hidden + ".parts"
        progress = _tree.Progress(f"upload_directory {target}")
        stream = _tree.ChunkReader(_tree.pack(fd, progress=progress))
        try:
            index = 0
            while True:
                data = await arun_blocking(stream.read, PART)
                if not data:
                    break
                await adapter.upload_file(f"{parts}/part-{index:06d}", data, "wb")
                index += 1
            await _run(adapter, _UNPACK, parts, hidden, target)
        except Exception:
            with contextlib.suppress(Exception):  # (the first error is the one to see)
                await _run(adapter, 'rm -rf -- "$1" "$2"', parts, hidden)
            raise
        progress.done()
    finally:
        os.close(fd)


async def download(adapter: AsyncSandboxAdapter, sandbox_path: str, local_path: LocalPath) -> None:
    target = _tree.local_target(local_path, "download_directory")
    await sandbox_source(adapter, sandbox_path)
    source = posixpath.normpath(sandbox_path)
    # the parts go to the sandbox's /tmp: the source's own directory may be read-only
    hidden = f"/tmp/{DOWNLOAD_PREFIX}{uuid.uuid4().hex}"
    progress = _tree.Progress(f"download_directory {source}")
    spool = await arun_blocking(_tree.spool_beside, target)
    try:
        try:
            await _run(adapter, _PACK, source, hidden, str(PART))
            names = sorted(i.name for i in await adapter.list_files(hidden) if i.name.startswith("part-"))
            for name in names:
                data = await adapter.download_file(f"{hidden}/{name}")
                progress.add(len(data))
                await arun_blocking(spool.write, data)
        finally:
            with contextlib.suppress(Exception):  # (the first error is the one to see)
                await _run(adapter, 'rm -rf -- "$1"', hidden)
        await arun_blocking(spool.seek, 0)
        await arun_blocking(_tree.extract, spool, Path(target), "download_directory")
    finally:
        await arun_blocking(spool.close)
    progress.done()
