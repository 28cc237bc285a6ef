"""Developer sessions: `nox -s tests lint typecheck codegen_check` (CI runs the same commands in .ci/run);
`nox -s bench` runs a short benchmark (not by default)."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "codegen_check", "tests"]
nox.options.reuse_existing_virtualenvs = True


def _install(session: nox.Session) -> None:
    session.install("-e", ".[dev]", "-e", "./conformance")


@nox.session
def tests(session: nox.Session) -> None:
    _install(session)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    _install(session)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the whole package, generated _sync/ included."""
    _install(session)
    session.run("mypy")


@nox.session
def codegen_check(session: nox.Session) -> None:
    _install(session)
    session.run("python", "-m", "codegen", "--check")


@nox.session
def bench(session: nox.Session) -> None:
    """A short benchmark of local and docker into ./bench-results (needs .ci/docker-up's offline images);
    extra arguments go to `grainchain benchmark run`, e.g. `nox -s bench -- --iterations 20`."""
    _install(session)
    session.run(
        "grainchain",
        "benchmark",
        "run",
        "--provider",
        "local",
        "--provider",
        "docker",
        "--config",
        'docker={"image": "grainchain-test/python:3.11"}',
        "--iterations",
        "10",
        "--output",
        "bench-results",
        *session.posargs,
    )
