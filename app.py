"""Start Studio History: `python app.py [--host H] [--port P]`, or `flask --app app run`."""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from history import ConfigError
from history import create_app
from history.config import VARIABLES


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or localhost)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_refusal(host: str, password: str | None, insecure: bool) -> str | None:
    """Why the server must not listen on ``host`` (no password, not loopback, no --insecure), or None."""
    if password or insecure or is_loopback(host):
        return None
    return (
        f"refusing to listen on {host} without STUDIO_ADMIN_PASSWORD: anyone who reaches it could delete jobs "
        "and start work; set a password, or pass --insecure if the network is yours alone"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the development server on the embedded defaults."""
    epilog = "environment:\n" + "\n".join(f"  {name:<24} {default:<28} {meaning}" for name, default, meaning in VARIABLES)
    parser = argparse.ArgumentParser(
        description="Studio History: the job history of a ComfyUI studio.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port to listen on (default 5000)")
    parser.add_argument("--debug", action="store_true", help="Flask debug mode with the reloader")
    parser.add_argument(
        "--insecure", action="store_true", help="listen on a non-loopback address without STUDIO_ADMIN_PASSWORD"
    )
    args = parser.parse_args(argv)
    refusal = exposure_refusal(args.host, os.environ.get("STUDIO_ADMIN_PASSWORD"), args.insecure)
    if refusal:
        print(f"studio-history: {refusal}", file=sys.stderr)
        return 2
    try:
        app = create_app()
    except ConfigError as error:
        print(f"studio-history: {error}", file=sys.stderr)
        return 2
    if not args.debug:
        # Run the executor (and the demo jobs on a fresh store) now, not on the first request; with the
        # debug reloader the serving child starts it on its first request instead.
        app.extensions["studio"].start()
    prefix = app.config["STUDIO"].url_prefix
    print(f" * Studio History: http://{args.host}:{args.port}{prefix}/admin/history", flush=True)
    app.run(host=args.host, port=args.port, debug=args.debug, use_reloader=args.debug, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
