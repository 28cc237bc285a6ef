"""`python -m tests.providers.e2b_fake [--port N] [--root DIR] [--template NAME]...`: serve the fake E2B
in the foreground, print one `export NAME=value` line per environment variable the SDK needs and `# ready`, serve until
SIGTERM or SIGINT."""

from __future__ import annotations

import argparse

from tests.providers._fakebox import serve

from .server import FakeE2B


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.providers.e2b_fake", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--root", help="directory for sandboxes and snapshots (default: a temporary one)")
    parser.add_argument("--api-key", help="the API key to accept (default: a random one)")
    parser.add_argument("--template", action="append", default=[], help="another template name to accept")
    args = parser.parse_args(argv)

    return serve(
        lambda: FakeE2B(args.root, api_key=args.api_key, templates=args.template, port=args.port).start()
    )


if __name__ == "__main__":
    raise SystemExit(main())
