#!/usr/bin/env python3
"""Container health probe without curl: ``healthcheck URL [URL ...]`` exits 0 when every URL
answers 2xx within 5 seconds, 1 otherwise (the reason goes to stderr, which Docker keeps in
``docker inspect``'s health log)."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def probe(url: str, timeout: float = 5.0) -> str | None:
    """None when healthy, else why not."""
    if not url.startswith(("http://", "https://")):
        return f"{url}: not an http(s) URL"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - scheme checked
            if 200 <= resp.status < 300:
                return None
            return f"{url}: HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {exc}"


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: healthcheck URL [URL ...]", file=sys.stderr)
        return 2
    problems = [p for p in (probe(url) for url in argv) if p]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
