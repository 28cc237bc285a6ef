"""Image builds and the mounts they copy files from.

A build runs an image definition's Dockerfile commands (`ImageGetOrCreateRequest.image`) the way a sandbox
runs a command: each RUN is `sh -c LINE` in bubblewrap over an overlay whose lower layer is the host's `/`
and whose upper directory starts as the base image's files (`FROM base`: an image built by the fake; any
other `FROM`: the host's file system). COPY/ADD take their files from the definition's context mount (which
the SDK uploads with MountPutFile / MountGetOrCreate: contents are kept on disk by sha256) and its inline
context files; they are staged in the build's /tmp and copied in by a command inside the overlay, so a
destination below a symlink of the host (`/bin` -> `usr/bin`) is followed, not shadowed. ENV and WORKDIR
become the image's env and workdir (a sandbox's defaults). The upper directory and /tmp left at the end are
the image's files. Builds run as tasks of the fake's event loop (commands are asynchronous, file copies in
threads), so the server answers meanwhile; the SDK waits for one with ImageJoinStreaming."""

from __future__ import annotations

import asyncio
import glob
import hashlib
import json
import os
import posixpath
import re
import shlex
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from modal_proto import api_pb2

from tests.providers._fakebox import PATH_ENV, Command, Ended, NoWorkdir, StartError, Stream, copy_tree

from ._cloud import ULID_ALPHABET, Cloud, CloudError, Image, Result, Sandbox, lay_out, new_id

INFO, STDOUT, STDERR = (
    api_pb2.FILE_DESCRIPTOR_INFO,
    api_pb2.FILE_DESCRIPTOR_STDOUT,
    api_pb2.FILE_DESCRIPTOR_STDERR,
)
OUTPUT_KEPT = 16 * 1024  # of a failing command's output, in the build's exception (its end)

# What the fake's registry has: a `FROM` of any other repository fails its build, as a pull of an image that
# is not there fails on Modal (every registry image is the host's file system anyway).
KNOWN_REPOSITORIES = frozenset(
    {
        "python",
        "debian",
        "ubuntu",
        "alpine",
        "busybox",
        "node",
        "grainchain-test/busybox",
        "grainchain-test/python",
    }
)

# A RUN line that is only a pip install (no `;`, `&`, `|`, backquote): skipped, since the fake has no
# network and `Image.pip_install` must still give an image (see the package docstring).
PIP_INSTALL = re.compile(r"^\s*(?:\S*/)?(?:pip3?|python3?(?:\.\d+)?\s+-m\s+pip)\s+install\b[^;&|`]*$")
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::([-+])([^}]*))?\}|([A-Za-z_]\w*))")
IGNORED = frozenset(
    {"CMD", "ENTRYPOINT", "LABEL", "EXPOSE", "VOLUME", "STOPSIGNAL", "HEALTHCHECK", "MAINTAINER", "ONBUILD"}
)


class BuildFailure(Exception):
    """The build fails with this message as its result's exception."""


def unknown_base(reference: str) -> bool:
    """Whether the fake's registry lacks the repository of an image reference (`python:3.11-slim`)."""
    name = reference.split("@")[0]
    if ":" in name.split("/")[-1]:
        name = name.rsplit(":", 1)[0]
    return name.removeprefix("docker.io/").removeprefix("library/") not in KNOWN_REPOSITORIES


# ---------------------------------------------------------------------------------------------- mounts


@dataclass
class MountFile:
    sha256: str
    mode: int


class Mounts:
    """Uploaded file contents (one file per sha256 under `root`) and mounts (a file list each). A mount's
    id derives from its files, so the same upload is the same mount and an image definition naming it is
    the same image (built once)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.mounts: dict[str, dict[str, MountFile]] = {}
        self.named: dict[tuple[int, str, str], str] = {}  # (namespace, environment, name) -> id

    def has(self, sha256: str) -> bool:
        return (self.root / sha256).exists()

    def put(self, sha256: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != sha256:
            raise CloudError("INVALID_ARGUMENT", f"the data's sha256 is not {sha256}")
        partial = self.root / f".{sha256}.{os.getpid()}.{id(data)}"
        partial.write_bytes(data)
        partial.rename(self.root / sha256)

    def create(self, files: Iterable[api_pb2.MountFile]) -> str:
        entries = {file.filename: MountFile(file.sha256_hex, file.mode) for file in files}
        missing = sorted(name for name, entry in entries.items() if not self.has(entry.sha256))
        if missing:
            raise CloudError("FAILED_PRECONDITION", f"files not uploaded: {', '.join(missing[:5])}")
        digest = hashlib.sha256(
            json.dumps(sorted((name, e.sha256, e.mode) for name, e in entries.items())).encode()
        ).digest()
        mount_id = "mo-" + "".join(ULID_ALPHABET[byte % 32] for byte in digest[:26])
        self.mounts[mount_id] = entries
        return mount_id

    def materialize(self, mount_id: str, target: Path) -> None:
        """Write a mount's files under `target` (a file `/a/b` at `target/a/b`), with their modes."""
        for name, entry in self.mounts[mount_id].items():
            path = target / name.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.root / entry.sha256, path)
            path.chmod(entry.mode & 0o7777 or 0o644)


# ---------------------------------------------------------------------------------------------- Dockerfiles


@dataclass
class Instruction:
    keyword: str  # upper case
    args: str  # the rest, continuation lines joined

    def __str__(self) -> str:
        return f"{self.keyword} {self.args}"


def instructions(lines: Iterable[str]) -> list[Instruction]:
    """A Dockerfile's instructions: comments and blank lines dropped, `\\`-continued lines joined (as
    Docker joins them: the backslash and newline removed; comment lines inside dropped)."""
    found: list[Instruction] = []
    pending: str | None = None
    for raw in lines:
        for line in raw.splitlines() or [""]:
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            text = line.rstrip()
            continued = text.endswith("\\")
            pending = (pending or "") + (text[:-1] if continued else text)
            if not continued:
                found.append(_instruction(pending))
                pending = None
    if pending is not None and pending.strip():
        found.append(_instruction(pending))
    return found


def _instruction(text: str) -> Instruction:
    keyword, _, args = text.strip().partition(" ")
    return Instruction(keyword.upper(), args.strip())


def expand(text: str, variables: Mapping[str, str]) -> str:
    """`$NAME`, `${NAME}`, `${NAME:-default}`, `${NAME:+other}` replaced (unset: empty), as Docker does."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(4)
        current = variables.get(name, "")
        if match.group(2) == "-":
            return current or match.group(3)
        if match.group(2) == "+":
            return match.group(3) if current else ""
        return current

    return VARIABLE.sub(value, text)


def words(text: str, variables: Mapping[str, str]) -> list[str]:
    """Split as Docker splits ENV, COPY, WORKDIR...: quotes and backslashes processed, variables expanded
    (not between single quotes)."""
    found: list[str] = []
    word: list[str] = []
    started = False
    quote = ""
    i = 0
    while i < len(text):
        char = text[i]
        if quote == "'":
            if char == "'":
                quote = ""
            else:
                word.append(char)
        elif char == "\\" and i + 1 < len(text) and (not quote or text[i + 1] in '"\\$'):
            word.append(text[i + 1])
            i += 1
        elif char == "$" and (match := VARIABLE.match(text, i)):
            word.append(expand(match.group(0), variables))
            started = True
            i = match.end()
            continue
        elif quote == '"':
            if char == '"':
                quote = ""
            else:
                word.append(char)
        elif char in "'\"":
            quote = char
            started = True
        elif char.isspace():
            if started or word:
                found.append("".join(word))
            word, started = [], False
        else:
            word.append(char)
        i += 1
    if started or word:
        found.append("".join(word))
    return found


def json_form(args: str) -> list[str] | None:
    """The exec (JSON array) form of RUN, SHELL, COPY...; None for the shell form."""
    if not args.startswith("["):
        return None
    try:
        parsed = json.loads(args)
    except ValueError:
        return None
    if isinstance(parsed, list) and all(isinstance(item, str) for item in parsed):
        return parsed
    return None


# ---------------------------------------------------------------------------------------------- builds


@dataclass
class _State:
    """What a build has made so far."""

    image: Image
    base: Image
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    args: dict[str, str] = field(default_factory=dict)  # ARG values: for expansion and RUN's env
    shell: list[str] = field(default_factory=lambda: ["/bin/sh", "-c"])
    box: Sandbox | None = None  # where commands run, once one has to
    context: Path | None = None  # the build context on this machine, once a COPY needs it
    copies: int = 0

    @property
    def variables(self) -> dict[str, str]:
        """For expansion: a registry image's PATH is the usual one (`ENV PATH=/opt/bin:$PATH` keeps it)."""
        return {"PATH": PATH_ENV, **self.args, **self.env}


class Builder:
    """Starts and runs image builds; a build's result and logs are on its image."""

    def __init__(self, cloud: Cloud, mounts: Mounts) -> None:
        self.cloud = cloud
        self.mounts = mounts
        self.running: set[str] = set()  # ids of the images being built

    def get_or_create(self, request: api_pb2.ImageGetOrCreateRequest) -> Image:
        """The image of a definition, its build started unless it has been built or is being built (a
        failed build is tried again). Modal's own base images (debian_slim, from_scratch: the global
        namespace) are prebuilt: the host's file system."""
        image = self.cloud.images[self.cloud.image(request.image.SerializeToString(deterministic=True))]
        if image.ready or image.id in self.running:
            return image
        if request.namespace == api_pb2.DEPLOYMENT_NAMESPACE_GLOBAL:
            image.end(Result(status=Result.GENERIC_STATUS_SUCCESS))
            return image
        image.restart()
        self.running.add(image.id)
        self.cloud.builds.append(image.id)
        self.cloud.spawn(self._build(image, request.image))
        return image

    async def _build(self, image: Image, definition: api_pb2.Image) -> None:
        state = _State(image=image, base=Image(""))
        try:
            await self._steps(state, definition)
            result = await self._keep(state)
        except BuildFailure as e:
            image.log(STDERR, f"{e}\n")
            result = Result(status=Result.GENERIC_STATUS_FAILURE, exception=str(e))
        except Exception as e:  # (a bug of the fake: said, not hidden)
            result = Result(status=Result.GENERIC_STATUS_FAILURE, exception=f"the fake's build broke: {e!r}")
        finally:
            if state.box is not None:
                self.cloud.building.discard(state.box)
                await asyncio.to_thread(shutil.rmtree, state.box.dir, True)
            self.running.discard(image.id)
        image.end(result)

    async def _steps(self, state: _State, definition: api_pb2.Image) -> None:
        bases = {base.docker_tag: base.image_id for base in definition.base_images}
        seen_from = False
        for step in instructions(definition.dockerfile_commands):
            if self.cloud.closing:
                raise BuildFailure("the build was stopped: the fake is shutting down")
            state.image.log(INFO, f"=> {step}\n")
            if step.keyword == "FROM":
                if seen_from:
                    raise BuildFailure("multi-stage Dockerfiles are not supported by the fake")
                seen_from = True
                await self._from(state, words(step.args, state.args), bases)
            elif not seen_from and step.keyword != "ARG":
                raise BuildFailure(f"{step.keyword} before FROM: a Dockerfile starts with FROM")
            elif step.keyword == "ARG":
                for word in words(step.args, state.variables):
                    name, has_default, default = word.partition("=")
                    if name in definition.build_args:
                        state.args[name] = definition.build_args[name]
                    elif has_default:
                        state.args[name] = default
            elif step.keyword == "ENV":
                state.env.update(self._env(step.args, state.variables))
            elif step.keyword == "WORKDIR":
                path = " ".join(words(step.args, state.variables))
                state.workdir = posixpath.normpath(posixpath.join(state.workdir or "/", path))
                await self._command(state, ["mkdir", "-p", state.workdir], "/")  # (as Docker makes it)
            elif step.keyword == "RUN":
                await self._run(state, step.args)
            elif step.keyword in ("COPY", "ADD"):
                await self._copy(state, step, definition)
            elif step.keyword == "SHELL":
                shell = json_form(step.args)
                if not shell:
                    raise BuildFailure('SHELL takes a JSON array: SHELL ["/bin/bash", "-c"]')
                state.shell = shell
            elif step.keyword == "USER":
                if step.args.split(":")[0] not in ("root", "0"):
                    raise BuildFailure("USER: the fake runs every command as root")
            elif step.keyword not in IGNORED:
                raise BuildFailure(f"unknown instruction: {step.keyword}")
        if not seen_from:
            raise BuildFailure("no FROM: a Dockerfile starts with FROM")

    async def _from(self, state: _State, parts: list[str], bases: Mapping[str, str]) -> None:
        parts = [part for part in parts if not part.startswith("--platform=")]
        if not parts:
            raise BuildFailure("FROM names no image")
        reference = parts[0]
        if reference in bases:
            base = self.cloud.images.get(bases[reference])
            if base is not None and base.result is None:
                async for _ in base.follow(len(base.logs), 3600):  # (the SDK builds it first: rarely waits)
                    pass
            if base is None or not base.ready:
                raise BuildFailure(f"base image {bases[reference]} has not been built")
            state.base = base
        elif reference != "scratch" and unknown_base(reference):
            raise BuildFailure(f"pull access denied for {reference}, repository does not exist")
        state.env = dict(state.base.env)
        state.workdir = state.base.workdir

    @staticmethod
    def _env(args: str, variables: Mapping[str, str]) -> dict[str, str]:
        parts = words(args, variables)
        if parts and "=" not in parts[0]:  # the old form: ENV NAME the rest of the line
            name, _, rest = args.strip().partition(" ")
            return {name: " ".join(words(rest, variables))}
        return dict(part.partition("=")[::2] for part in parts)

    async def _run(self, state: _State, args: str) -> None:
        if args.startswith("--"):
            raise BuildFailure(f"RUN {args.split()[0]}: RUN options are not supported by the fake")
        argv = json_form(args)
        if argv is None:
            if PIP_INSTALL.match(args):
                state.image.log(INFO, "(skipped: the fake has no network for pip; see its docstring)\n")
                return
            argv = [*state.shell, args]
        if not argv:
            raise BuildFailure("RUN with no command")
        ended, output = await self._command(state, argv, state.workdir or "/", log=True)
        if ended.code != 0:
            code = ended.code if ended.code is not None else 128 + (ended.signal or 0)
            tail = output[-OUTPUT_KEPT:].decode(errors="replace")
            raise BuildFailure(f"{tail}RUN {args}: the command exited with code {code}")

    async def _command(
        self, state: _State, argv: list[str], cwd: str, *, log: bool = False
    ) -> tuple[Ended, bytes]:
        """Run a command in the build's overlay (made when the first command needs it); how it ended and
        its output (stdout and stderr, interleaved), also logged when `log`."""
        box = await self._box(state)
        output = bytearray()
        ended: asyncio.Future[Ended] = asyncio.get_running_loop().create_future()

        def on_output(name: Stream, data: bytes) -> None:
            output.extend(data)
            if log:
                state.image.log(STDOUT if name == "stdout" else STDERR, data.decode(errors="replace"))

        def on_end(how: Ended) -> None:
            if not ended.done():
                ended.set_result(how)

        command = Command(on_output, on_end)
        env = {"PATH": PATH_ENV, "HOME": "/root", **state.args, **state.env}
        if self.cloud.closing:  # (checked with no await before the start: shutdown kills what started)
            raise BuildFailure("the build was stopped: the fake is shutting down")
        try:
            await command.start(box.bwrap_argv(), argv, env, popens=box.popens, stdin=False, cwd=cwd)
        except NoWorkdir as e:
            raise BuildFailure(f"the working directory {cwd!r} cannot be used: {e}") from None
        except StartError as e:
            raise BuildFailure(f"the command did not start: {e}") from None
        how = await ended
        if not output.endswith(b"\n") and output:
            output.extend(b"\n")
        return how, bytes(output)

    async def _box(self, state: _State) -> Sandbox:
        if state.box is None:
            build_id = new_id("bu-")
            state.box = Sandbox(
                id=build_id,
                task_id="",
                app_id="",
                definition=api_pb2.Sandbox(),
                env={},
                tags={},
                dir=self.cloud.root / "builds" / build_id,
                created_at=0.0,
                image=state.base,
            )
            self.cloud.building.add(state.box)
            await asyncio.to_thread(lay_out, state.box, state.base)
        return state.box

    async def _copy(self, state: _State, step: Instruction, definition: api_pb2.Image) -> None:
        """COPY/ADD from the context: sources (globs allowed) staged in the build's /tmp, then copied by
        `cp` inside the overlay (ADD also unpacks a local tar archive, as Docker does)."""
        parts = json_form(step.args) or words(step.args, state.variables)
        chmod: int | None = None
        while parts and parts[0].startswith("--"):
            flag, _, value = parts.pop(0).partition("=")
            if flag == "--chmod":
                if not re.fullmatch(r"[0-7]{3,4}", value):
                    raise BuildFailure(f"{step.keyword} --chmod={value}: an octal mode only")
                chmod = int(value, 8)
            elif flag not in ("--chown", "--link"):  # (owner: always root in the fake)
                raise BuildFailure(f"{step.keyword} {flag}: not supported by the fake")
        if len(parts) < 2:
            raise BuildFailure(f"{step.keyword} needs a source and a destination")
        *sources, dest = parts
        context = await self._context(state, definition)
        found: list[str] = []
        for source in sources:
            if re.match(r"^[a-z]+://", source):
                raise BuildFailure(f"{step.keyword} {source}: the fake has no network")
            relative = posixpath.normpath(source.lstrip("/") or ".")
            if relative.startswith(".."):
                raise BuildFailure(f"{step.keyword} {source}: outside the build context")
            hits = sorted(glob.glob(relative, root_dir=context)) if glob.has_magic(relative) else [relative]
            hits = [hit for hit in hits if os.path.lexists(context / hit)]
            if not hits:
                raise BuildFailure(f"{step.keyword} {source}: not found in the build context")
            found.extend(hits)
        into = dest.endswith("/") or len(found) > 1
        dest = posixpath.normpath(posixpath.join(state.workdir or "/", dest))
        state.copies += 1
        staging = f".modal-copy-{state.copies}"
        box = await self._box(state)
        script = ["set -e"]
        for index, hit in enumerate(found):
            inside = f"/tmp/{staging}/{index}/{posixpath.basename(hit) if hit != '.' else 'context'}"
            await asyncio.to_thread(self._stage, context / hit, box.tmp / staging / str(index), inside, chmod)
            q_src, q_dest = shlex.quote(inside), shlex.quote(dest)
            if (context / hit).is_dir():
                script.append(f"mkdir -p {q_dest} && cp -R -P --preserve=mode,timestamps {q_src}/. {q_dest}/")
            elif step.keyword == "ADD" and re.search(r"\.(tar|tgz|tar\.(gz|bz2|xz|zst))$", hit):
                script.append(f"mkdir -p {q_dest} && tar -xf {q_src} -C {q_dest}")
            elif into:
                script.append(f"mkdir -p {q_dest} && cp -P --preserve=mode,timestamps {q_src} {q_dest}/")
            else:
                parent = shlex.quote(posixpath.dirname(dest))
                script.append(f"mkdir -p {parent} && cp -P --preserve=mode,timestamps {q_src} {q_dest}")
        try:
            ended, output = await self._command(state, ["sh", "-c", "\n".join(script)], "/")
        finally:
            await asyncio.to_thread(shutil.rmtree, box.tmp / staging, True)
        if ended.code != 0:
            raise BuildFailure(f"{output.decode(errors='replace')}{step}: the copy failed")

    @staticmethod
    def _stage(source: Path, staging: Path, inside: str, chmod: int | None) -> None:
        target = staging / posixpath.basename(inside)
        staging.mkdir(parents=True)
        if source.is_dir():
            copy_tree(source, target)
        else:
            shutil.copy2(source, target, follow_symlinks=False)
        if chmod is not None:
            for path in [target, *target.rglob("*")]:
                path.chmod(chmod)

    async def _context(self, state: _State, definition: api_pb2.Image) -> Path:
        """The build context (the context mount's files and the inline context files) on this machine."""
        if state.context is None:
            box = await self._box(state)
            context = box.dir / "context"
            if definition.context_mount_id and definition.context_mount_id not in self.mounts.mounts:
                raise BuildFailure(f"mount {definition.context_mount_id} not found")

            def write() -> None:
                context.mkdir()
                if definition.context_mount_id:
                    self.mounts.materialize(definition.context_mount_id, context)
                for file in definition.context_files:
                    path = context / file.filename.lstrip("/")
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(file.data)

            await asyncio.to_thread(write)
            state.context = context
        return state.context

    async def _keep(self, state: _State) -> Result:
        """The build's files become the image's (the base's own when nothing ran), with its env and
        workdir."""
        image = state.image
        image.env, image.workdir = state.env, state.workdir
        if state.box is None:
            image.files = state.base.files
        else:
            box = state.box
            files = self.cloud.root / "images" / image.id

            def move() -> None:
                shutil.rmtree(files, ignore_errors=True)  # (of an earlier, failed attempt)
                files.mkdir(parents=True)
                box.upper.rename(files / "upper")
                box.tmp.rename(files / "tmp")

            await asyncio.to_thread(move)
            image.files = files
        return Result(status=Result.GENERIC_STATUS_SUCCESS)
