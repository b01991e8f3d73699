"""Start Studio History: `python app.py [--host H] [--port P] [--insecure]` (`studio-history serve`), or
`flask --app app run`, which finds create_app here."""
from __future__ import annotations

import sys

from history import create_app  # noqa: F401  (flask --app app)
from history.cli import exposure_refusal  # noqa: F401  (make serve asks it before starting gunicorn)
from history.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    """Run the development server, as `studio-history serve` does."""
    return cli_main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
