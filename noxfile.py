"""Developer sessions: `nox -s tests lint typecheck codegen_check` (CI runs the same commands in .ci/run)."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "codegen_check", "tests"]
nox.options.reuse_existing_virtualenvs = True


def _install(session: nox.Session) -> None:
    session.install("-e", ".[dev]")


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
