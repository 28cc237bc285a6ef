"""Async source → sync twin, token by token on tokenize_rt (our replacement for unasync 0.6.0).

Does what unasync does (drop `async`/`await`, its built-in renames, ours, also in strings that are just a
name) plus what adapters over cloud SDKs need: `X.aio` → `X` (modal keeps a method's async twin on its
`.aio` attribute) and rename tables applied per module (morph's `aexec` → `exec` only in its provider).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from fnmatch import fnmatchcase

# no stubs; `unused-ignore` because pyproject's mypy overrides already silence it there
import tokenize_rt  # type: ignore[import-untyped, unused-ignore]

# unasync 0.6.0's own table (unasync._ASYNC_TO_SYNC): always applied, never reported as unused
BUILTIN_REPLACEMENTS = {
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
    "asynccontextmanager": "contextmanager",
    "AsyncIterable": "Iterable",
    "AsyncIterator": "Iterator",
    "AsyncGenerator": "Generator",
    "StopAsyncIteration": "StopIteration",
}
_ASYNC_NAME = re.compile(r"\bAsync[A-Z]\w*")


def to_sync(source: str, replacements: Mapping[str, str]) -> str:
    """One module's sync twin. Unlike unasync, an unmapped `AsyncFoo` stays as is (no `SyncFoo`)."""
    table = {**BUILTIN_REPLACEMENTS, **replacements}
    tokens = tokenize_rt.src_to_tokens(source)
    out: list[tokenize_rt.Token] = []
    i = 0
    while i < len(tokens):
        tok, nxt = tokens[i], tokens[i + 1] if i + 1 < len(tokens) else None
        if tok.name == "NAME" and tok.src in ("async", "await"):
            # the space after goes too: `print(await x)` → `print(x)`, not `print( x)`
            i += 2 if nxt is not None and nxt.name == tokenize_rt.UNIMPORTANT_WS else 1
            continue
        if tok.matches(name="OP", src=".") and nxt is not None and nxt.matches(name="NAME", src="aio"):
            i += 2  # modal: `await sb.exec.aio(...)` is the async twin of `sb.exec(...)`
            continue
        if tok.name == "NAME":
            tok = tok._replace(src=table.get(tok.src, tok.src))
        elif tok.name == "STRING" and tok.src[1:-1] in table:
            # like unasync: a string that is exactly a name is renamed (`cast("AsyncFoo", x)`); strings
            # with a prefix or triple quotes, or with more than the name, are left alone
            tok = tok._replace(src=tok.src[0] + table[tok.src[1:-1]] + tok.src[-1])
        out.append(tok)
        i += 1
    result: str = tokenize_rt.tokens_to_src(out)
    return result


def sync_path(async_path: str) -> str:
    """A path component `_async` becomes `_sync`, a file `_async.py` becomes `_sync.py`."""
    parts = async_path.split("/")
    new = ["_sync" if part == "_async" else "_sync.py" if part == "_async.py" else part for part in parts]
    if new == parts:
        raise ValueError(f"{async_path!r} has no `_async` directory or `_async.py` file: no sync twin path")
    return "/".join(new)


def unasync_tree(
    sources: dict[str, str],
    replacements: Mapping[str, str],
    module_replacements: Mapping[str, Mapping[str, str]],
) -> dict[str, str]:
    """{async path: source} → {sync path: source}, refusing unmapped `Async*` names and unused renames.

    module_replacements maps an fnmatch pattern on the source path to renames for matching sources only
    (they win over the global ones there).
    """
    matching = {path: [pat for pat in module_replacements if fnmatchcase(path, pat)] for path in sources}
    tables = {
        path: {**replacements, **{k: v for pat in pats for k, v in module_replacements[pat].items()}}
        for path, pats in matching.items()
    }
    unknown = sorted(
        f"{name} ({path})"
        for path, src in sources.items()
        for name in set(_ASYNC_NAME.findall(src))
        if name not in tables[path] and name not in BUILTIN_REPLACEMENTS
    )
    if unknown:
        raise SystemExit(
            f"codegen: add sync names (REPLACEMENTS or MODULE_REPLACEMENTS) for {', '.join(unknown)}"
        )

    def used(name: str, paths: list[str]) -> bool:
        return any(re.search(rf"\b{re.escape(name)}\b", sources[path]) for path in paths)

    # a rename no source needs is stale: keeping the tables honest keeps them readable
    unused = [name for name in replacements if not used(name, list(sources))] + [
        f"{name} ({pat})"
        for pat, table in module_replacements.items()
        for name in table
        if not used(name, [path for path in sources if pat in matching[path]])
    ]
    if unused:
        raise SystemExit(f"codegen: unused unasync replacements (remove them): {', '.join(unused)}")
    out = {sync_path(path): to_sync(src, tables[path]) for path, src in sources.items()}
    if len(out) != len(sources):
        raise SystemExit("codegen: two async sources map to the same sync path")
    return out
