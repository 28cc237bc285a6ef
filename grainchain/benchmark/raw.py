"""Raw baselines: the operations the benchmark times, done without grainchain by the plainest means, so
that grainchain's overhead shows as a ratio.

One `RawBaseline` per provider (and, later, per isolation mode: a bubblewrap baseline for the local
provider's isolation registers in `baseline_for` beside the plain one). A baseline makes `RawBox`es, the
raw counterpart of a sandbox; shared state such as an HTTP client lives in the baseline, as a careful user
would keep it.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shlex
import shutil
import signal
import subprocess
import tempfile
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import httpx

from grainchain.models import SandboxConfig
from grainchain.providers.docker import _engine as dk
from grainchain.providers.local import _isolation as iso
from grainchain.providers.local import _python as python
from grainchain.providers.local._hostproc import SHELL, scrubbed_environment
from grainchain.settings import Settings


class RawError(RuntimeError):
    """A raw operation failed (it is counted as a failed attempt of the raw side)."""


class RawBox(ABC):
    """One sandbox made without grainchain. Paths are relative to its workspace."""

    supports_memory = False  # memory_snapshot, terminate and wake_up

    @abstractmethod
    def exec(self, command: str) -> tuple[int, bytes, bytes]:
        """Run `/bin/sh -c command`; exit code, stdout, stderr."""

    @abstractmethod
    def upload(self, path: str, data: bytes) -> None: ...

    @abstractmethod
    def download(self, path: str) -> bytes: ...

    @abstractmethod
    def list(self, path: str) -> int:
        """Name, type, size, mode and mtime of every entry of a directory; returns how many."""

    @abstractmethod
    def snapshot(self) -> str: ...

    @abstractmethod
    def restore(self, snapshot: str) -> None: ...

    @abstractmethod
    def delete_snapshot(self, snapshot: str) -> None: ...

    def memory_snapshot(self) -> str:
        raise NotImplementedError

    def terminate(self) -> None:
        raise NotImplementedError

    def wake_up(self, snapshot: str) -> None:
        raise NotImplementedError

    @abstractmethod
    def close(self) -> None: ...


class RawBaseline(ABC):
    description: str  # shown in the report next to the ratios

    @abstractmethod
    def create(self) -> RawBox: ...

    @abstractmethod
    def close(self) -> None:
        """Release what the boxes shared."""


def baseline_for(provider: str, config: SandboxConfig, settings: Settings) -> RawBaseline | None:
    """The raw baseline of a provider (and of its isolation mode), or None when it has none (its ratios
    are then left out)."""
    if provider == "local":
        # the sandbox's own reading of provider_config decides whether commands run in namespaces
        options = iso.parse_options(config.provider_config, None)
        if options.isolation == "namespaces":
            return LocalNamespacesBaseline(settings, options.network)
        return LocalBaseline(settings)
    if provider == "docker":
        return DockerBaseline(config)
    if provider == "e2b":
        return E2bBaseline(config)
    if provider == "modal":
        return ModalBaseline(config)
    return None


# -- local: plain subprocess and os calls --------------------------------------------------------------


class LocalBaseline(RawBaseline):
    description = "plain subprocess.run(['/bin/sh', '-c', cmd]) and os/shutil file calls"

    def __init__(self, settings: Settings) -> None:
        # beside grainchain's own workspaces: the same filesystem, so copies cost the same
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self._root = Path(tempfile.mkdtemp(prefix="bench-raw-", dir=settings.state_dir))

    def create(self) -> LocalBox:
        return LocalBox(Path(tempfile.mkdtemp(dir=self._root)))

    def close(self) -> None:
        shutil.rmtree(self._root, ignore_errors=True)


class LocalBox(RawBox):
    def __init__(self, root: Path) -> None:
        self._root = root
        self._workspace = root / "workspace"
        self._tmp = root / "tmp"
        self._workspace.mkdir()
        self._tmp.mkdir()
        # the same scrubbed environment a local sandbox's commands get, `python` from the same venv of its own
        self._python = python.store()
        home = str(self._workspace)
        self._env = scrubbed_environment(
            {"HOME": home, "TMPDIR": str(self._tmp)}, self._python.environment(False, home)
        )

    def exec(self, command: str) -> tuple[int, bytes, bytes]:
        done = subprocess.run(
            [SHELL, "-c", command],
            cwd=self._workspace,
            env=self._env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        return done.returncode, done.stdout, done.stderr

    def upload(self, path: str, data: bytes) -> None:
        target = self._workspace / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def download(self, path: str) -> bytes:
        return (self._workspace / path).read_bytes()

    def list(self, path: str) -> int:
        with os.scandir(self._workspace / path) as entries:
            return len([(e.name, e.stat(follow_symlinks=False)) for e in entries])

    def snapshot(self) -> str:
        name = uuid.uuid4().hex
        shutil.copytree(self._workspace, self._root / name, symlinks=True)
        return name

    def restore(self, snapshot: str) -> None:
        # in place, not by replacing the directory: a holder's bind mount keeps seeing the same one
        for entry in os.scandir(self._workspace):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        shutil.copytree(self._root / snapshot, self._workspace, symlinks=True, dirs_exist_ok=True)

    def delete_snapshot(self, snapshot: str) -> None:
        shutil.rmtree(self._root / snapshot)

    def close(self) -> None:
        shutil.rmtree(self._root, ignore_errors=True)


class LocalNamespacesBaseline(LocalBaseline):
    description = (
        "a bubblewrap holder per box, started as grainchain starts it; each command joins it with a plain "
        "subprocess.run(['nsenter', ..., '/bin/sh', '-c', cmd]); os/shutil file calls"
    )

    def __init__(self, settings: Settings, network: str) -> None:
        super().__init__(settings)
        self._network = network

    def create(self) -> LocalNamespacesBox:
        return LocalNamespacesBox(Path(tempfile.mkdtemp(dir=self._root)), self._network)


class LocalNamespacesBox(LocalBox):
    """A workspace seen as /workspace by commands in the namespaces of one bwrap holder."""

    def __init__(self, root: Path, network: str) -> None:
        super().__init__(root)
        self._env = scrubbed_environment(
            {"HOME": iso.WORKSPACE, "TMPDIR": iso.SANDBOX_TMP}, self._python.environment(True, iso.WORKSPACE)
        )
        self._holder = iso.start_holder(
            self._workspace,
            self._tmp,
            root / "holder.log",
            network=network,
            env=self._env,
            ro_binds=self._python.binds,
        )
        self._enter = self._holder.enter_argv(None)

    def exec(self, command: str) -> tuple[int, bytes, bytes]:
        done = subprocess.run(
            [*self._enter, SHELL, "-c", command],
            env=self._env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        return done.returncode, done.stdout, done.stderr

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._holder.pid, signal.SIGKILL)  # its pid 1: the whole pid namespace goes with it
        super().close()


# -- docker: the Engine API with httpx over the engine's socket -------------------------------------------

RAW_LABEL = "grainchain.benchmark.raw"  # on every container and image the raw side makes
RAW_REPO = "grainchain-benchmark-raw"
# PID 1 of a raw container: a shell that exits on SIGTERM (a quick stop) and that CRIU can restore
# (docker-init cannot be restored on this kind of machine)
KEEP_ALIVE = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done"]


class DockerBaseline(RawBaseline):
    description = "Engine API calls made directly with one httpx.Client over the engine's socket"

    def __init__(self, config: SandboxConfig) -> None:
        from grainchain.providers.docker._sync.adapter import DockerAdapter  # its choice of image, not a copy
        from grainchain.providers.docker.config import DockerConfig

        self.image = DockerAdapter._image_of(config, DockerConfig.model_validate(config.provider_config))
        self.env = [f"{k}={v}" for k, v in config.environment_vars.items()]  # as a sandbox's container has
        endpoint = dk.engine_endpoint()
        transport = httpx.HTTPTransport(uds=endpoint.uds) if endpoint.uds else None
        self.client = httpx.Client(transport=transport, base_url=endpoint.base_url, timeout=600)
        self._root: str | None = None
        self.checkpoints = tempfile.mkdtemp(prefix="grainchain-bench-checkpoints-")

    def call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = self.client.request(method, url, **kwargs)
        if not response.is_success:
            raise RawError(f"{method} {url}: {response.status_code} {dk.engine_message(response.content)}")
        return response

    def start_container(self, image: str) -> str:
        body = {
            "Image": image,
            "Entrypoint": KEEP_ALIVE,
            "Cmd": None,
            "WorkingDir": dk.WORKSPACE,
            "Env": self.env,
            "Labels": {RAW_LABEL: "1"},
        }
        container = str(self.call("POST", "/containers/create", json=body).json()["Id"])
        self.call("POST", f"/containers/{container}/start")
        return container

    def create(self) -> DockerBox:
        return DockerBox(self, self.start_container(self.image))

    def docker_root(self) -> str:
        if self._root is None:
            self._root = str(self.call("GET", "/info").json()["DockerRootDir"])
        return self._root

    def close(self) -> None:
        # snapshot images deleted while a container still used them stay behind, untagged
        filters = json.dumps({"dangling": ["true"], "label": [f"{RAW_LABEL}=1"]})
        with contextlib.suppress(httpx.HTTPError):
            self.client.post("/images/prune", params={"filters": filters})
        self.client.close()
        shutil.rmtree(self.checkpoints, ignore_errors=True)


class DockerBox(RawBox):
    supports_memory = True

    def __init__(self, baseline: DockerBaseline, container: str) -> None:
        self._b = baseline
        self._container = container
        self._memory_snapshots: list[tuple[str, str]] = []  # (image, saved checkpoint)

    def _abs(self, path: str) -> str:
        return dk.resolve(dk.WORKSPACE, path)

    def exec(self, command: str) -> tuple[int, bytes, bytes]:
        body = {"AttachStdout": True, "AttachStderr": True, "Cmd": [SHELL, "-c", command]}
        exec_id = self._b.call("POST", f"/containers/{self._container}/exec", json=body).json()["Id"]
        out: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        decoder = dk.FrameDecoder()
        with self._b.client.stream(
            "POST",
            f"/exec/{exec_id}/start",
            json={"Detach": False, "Tty": False},
            headers=dk.EXEC_START_HEADERS,
        ) as response:
            for chunk in response.iter_raw():
                for stream, payload in decoder.feed(chunk):
                    out.setdefault(stream, bytearray()).extend(payload)
        info = self._b.call("GET", f"/exec/{exec_id}/json").json()
        code = info.get("ExitCode")
        return (-1 if code is None else int(code)), bytes(out[1]), bytes(out[2])

    def upload(self, path: str, data: bytes) -> None:
        directory, _, name = self._abs(path).rpartition("/")
        size, pieces = dk.tar_one_file(name, data)  # streamed: one bytes body makes httpx quadratic
        self._b.call(
            "PUT",
            f"/containers/{self._container}/archive",
            params={"path": directory or "/"},
            content=pieces,
            headers={"Content-Type": "application/x-tar", "Content-Length": str(size)},
        )

    def download(self, path: str) -> bytes:
        reader = dk.FirstFileReader()
        with self._b.client.stream(
            "GET",
            f"/containers/{self._container}/archive",
            params={"path": self._abs(path)},
            headers={"Accept-Encoding": "identity"},  # not gzipped by the engine
        ) as response:
            if not response.is_success:
                raise RawError(
                    f"download {path}: {response.status_code} {dk.engine_message(response.read())}"
                )
            for chunk in response.iter_bytes():
                reader.feed(chunk)
        data = reader.content()
        if data is None:
            raise RawError(f"{path} is not a regular file")
        return data

    def list(self, path: str) -> int:
        # one stat for all entries: the plain way to get what FileInfo holds
        where = shlex.quote(self._abs(path))
        code, out, err = self.exec(f"find {where} -mindepth 1 -maxdepth 1 -exec stat -c '%f %s %Y %n' {{}} +")
        if code != 0:
            raise RawError(f"listing {path} exited {code}: {err.decode(errors='replace').strip()}")
        return out.count(b"\n")

    def snapshot(self) -> str:
        tag = uuid.uuid4().hex[:20]
        params = {"container": self._container, "repo": RAW_REPO, "tag": tag}
        self._b.call("POST", "/commit", params=params, json={"Labels": {RAW_LABEL: "1"}})
        return f"{RAW_REPO}:{tag}"

    def restore(self, snapshot: str) -> None:
        new = self._b.start_container(snapshot)
        old, self._container = self._container, new
        self._b.call("DELETE", f"/containers/{old}", params={"force": "1", "v": "1"})

    def delete_snapshot(self, snapshot: str) -> None:
        self._b.call("DELETE", f"/images/{snapshot}", params={"force": "1"})

    def memory_snapshot(self) -> str:
        """The plain way to what grainchain's memory snapshot gives: a checkpoint that stops the container
        (so that the files match the memory), a commit, a copy of the checkpoint kept outside the
        container, then the container continues from its checkpoint."""
        name = "raw-" + uuid.uuid4().hex[:12]
        body = {"CheckpointID": name, "Exit": True}
        self._b.call("POST", f"/containers/{self._container}/checkpoints", json=body)
        image = f"{RAW_REPO}:{name}"
        params = {"container": self._container, "repo": RAW_REPO, "tag": name, "pause": "0"}
        self._b.call("POST", "/commit", params=params, json={"Labels": {RAW_LABEL: "1"}})
        checkpoint = dk.checkpoint_path(self._b.docker_root(), self._container, name)
        saved = os.path.join(self._b.checkpoints, name)
        dk.save_checkpoint(checkpoint, saved)
        self._memory_snapshots.append((image, saved))
        self._start_from_checkpoint(self._container, name, None)
        return name

    def _start_from_checkpoint(self, container: str, name: str, saved: str | None) -> None:
        # moby#42900: the same checkpoint content restored twice fails ("already exists") until containerd
        # collects garbage; a unique file in the checkpoint directory is the way round
        dk.stage_checkpoint(dk.checkpoint_path(self._b.docker_root(), container, name), saved)
        self._b.call("POST", f"/containers/{container}/start", params={"checkpoint": name})
        with contextlib.suppress(RawError):
            self._b.call("DELETE", f"/containers/{container}/checkpoints/{name}")

    def terminate(self) -> None:
        self._b.call("POST", f"/containers/{self._container}/stop", params={"t": "1"})

    def wake_up(self, snapshot: str) -> None:
        """A new container of the committed image, started from the saved checkpoint."""
        body = {
            "Image": f"{RAW_REPO}:{snapshot}",
            "Entrypoint": KEEP_ALIVE,
            "Cmd": None,
            "WorkingDir": dk.WORKSPACE,
            "Env": self._b.env,
            "Labels": {RAW_LABEL: "1"},
        }
        new = str(self._b.call("POST", "/containers/create", json=body).json()["Id"])
        self._start_from_checkpoint(new, snapshot, os.path.join(self._b.checkpoints, snapshot))
        old, self._container = self._container, new
        self._b.call("DELETE", f"/containers/{old}", params={"force": "1", "v": "1"})

    def close(self) -> None:
        self._b.call("DELETE", f"/containers/{self._container}", params={"force": "1", "v": "1"})
        for image, saved in self._memory_snapshots:
            with contextlib.suppress(RawError):
                self.delete_snapshot(image)
            shutil.rmtree(saved, ignore_errors=True)


# -- e2b: the SDK's blocking client, as its documentation shows it ----------------------------------------


class E2bBaseline(RawBaseline):
    description = "the e2b SDK's blocking Sandbox called directly (commands.run, files.write/read/list)"

    def __init__(self, config: SandboxConfig) -> None:
        from grainchain.providers.e2b.config import E2bConfig

        options = E2bConfig.model_validate(config.provider_config)
        self.template = config.image or options.template or os.environ.get("E2B_TEMPLATE") or None
        self.api: dict[str, Any] = {"api_key": options.secret("api_key") or os.environ.get("E2B_API_KEY")}
        for name in ("domain", "api_url", "sandbox_url"):
            if getattr(options, name) is not None:
                self.api[name] = getattr(options, name)
        self.lifetime = options.lifetime
        self.envs = dict(config.environment_vars)

    def create(self) -> E2bBox:
        import e2b

        return E2bBox(
            self, e2b.Sandbox.create(self.template, timeout=self.lifetime, envs=self.envs, **self.api)
        )

    def close(self) -> None:
        pass


class E2bBox(RawBox):
    def __init__(self, baseline: E2bBaseline, sandbox: Any) -> None:
        self._b = baseline
        self._sbx = sandbox

    def exec(self, command: str) -> tuple[int, bytes, bytes]:
        import e2b

        try:
            result = self._sbx.commands.run(command, timeout=0)
        except e2b.CommandExitException as exc:
            return exc.exit_code, exc.stdout.encode(), exc.stderr.encode()
        return result.exit_code, result.stdout.encode(), result.stderr.encode()

    def upload(self, path: str, data: bytes) -> None:
        self._sbx.files.write(path, data)

    def download(self, path: str) -> bytes:
        return bytes(self._sbx.files.read(path, format="bytes"))

    def list(self, path: str) -> int:
        return len(self._sbx.files.list(path, depth=1))

    def snapshot(self) -> str:
        return str(self._sbx.create_snapshot(mode="filesystem").snapshot_id)

    def restore(self, snapshot: str) -> None:
        import e2b

        new = e2b.Sandbox.create(snapshot, timeout=self._b.lifetime, envs=self._b.envs, **self._b.api)
        old, self._sbx = self._sbx, new
        old.kill()

    def delete_snapshot(self, snapshot: str) -> None:
        import e2b

        e2b.Sandbox.delete_snapshot(snapshot, **self._b.api)

    def close(self) -> None:
        self._sbx.kill()


# -- modal: the SDK's blocking calls, as its documentation shows them ----------------------------------


class ModalBaseline(RawBaseline):
    description = (
        "the modal SDK's blocking Sandbox called directly (exec + wait, filesystem.write_bytes/read_bytes/"
        "list_files, snapshot_filesystem)"
    )

    def __init__(self, config: SandboxConfig) -> None:
        import modal

        from grainchain.providers.modal.config import ModalConfig

        options = ModalConfig.model_validate(config.provider_config)
        token_id, token_secret = options.secret("token_id"), options.secret("token_secret")
        self.client = (
            modal.Client.from_credentials(token_id, token_secret) if token_id and token_secret else None
        )
        self.app = modal.App.lookup(options.app_name, create_if_missing=True, client=self.client)
        image = options.image or config.image
        self.image = modal.Image.from_registry(image) if isinstance(image, str) else image
        self.lifetime = options.lifetime
        self.env: dict[str, str | None] = dict(config.environment_vars)

    def create(self) -> ModalBox:
        return ModalBox(self, self._sandbox(self.image))

    def _sandbox(self, image: Any) -> Any:
        import modal

        return modal.Sandbox.create(
            app=self.app,
            image=image,
            timeout=self.lifetime,
            env=self.env,
            workdir="/workspace",
            client=self.client,
        )

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class ModalBox(RawBox):
    def __init__(self, baseline: ModalBaseline, sandbox: Any) -> None:
        self._b = baseline
        self._sb = sandbox

    def exec(self, command: str) -> tuple[int, bytes, bytes]:
        process = self._sb.exec("sh", "-c", command, text=False)
        stdout, stderr = process.stdout.read(), process.stderr.read()
        return process.wait(), stdout, stderr

    def upload(self, path: str, data: bytes) -> None:
        self._sb.filesystem.write_bytes(data, posixpath.join("/workspace", path))

    def download(self, path: str) -> bytes:
        return bytes(self._sb.filesystem.read_bytes(posixpath.join("/workspace", path)))

    def list(self, path: str) -> int:
        return len(self._sb.filesystem.list_files(posixpath.join("/workspace", path)))

    def snapshot(self) -> str:
        return str(self._sb.snapshot_filesystem().object_id)

    def restore(self, snapshot: str) -> None:
        import modal

        new = self._b._sandbox(modal.Image.from_id(snapshot, client=self._b.client))
        old, self._sb = self._sb, new
        old.terminate()

    def delete_snapshot(self, snapshot: str) -> None:
        pass  # the SDK cannot delete an image (Modal removes it at the end of its time to live)

    def close(self) -> None:
        self._sb.terminate()
