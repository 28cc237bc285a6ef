"""`python -m tests.providers.modal_fake [--port N] [--root DIR] [--keep-root]`: serve the fake Modal in the
foreground, print one `export NAME=value` line per environment variable the SDK needs and `# ready`, serve
until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse

from tests.providers._fakebox import serve

from .server import FakeModal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.providers.modal_fake", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--root", help="directory for sandboxes and images (default: a temporary one)")
    parser.add_argument("--keep-root", action="store_true", help="do not remove the root when stopping")
    parser.add_argument("--token-id", help="the token id to accept (default: a random one)")
    parser.add_argument("--token-secret", help="the token secret to accept (default: a random one)")
    args = parser.parse_args(argv)
    return serve(
        lambda: FakeModal(
            args.root,
            token_id=args.token_id,
            token_secret=args.token_secret,
            port=args.port,
            keep_root=args.keep_root,
        ).start()
    )


if __name__ == "__main__":
    raise SystemExit(main())
