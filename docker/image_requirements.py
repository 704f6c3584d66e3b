"""The requirements a container image installs with pip: requirements.txt less what it gets elsewhere.

    python3 docker/image_requirements.py requirements.txt --from-base torch torchaudio torchcodec \
        --built bitsandbytes > /tmp/requirements-image.txt
    python3 docker/image_requirements.py requirements.txt --pin bitsandbytes   # prints 0.50.2

On a Jetson, torch and the packages compiled against it (torchaudio, torchcodec) come with the
L4T base image (PyPI has no CUDA build of them for JetPack), and bitsandbytes is compiled in a
builder stage at the version requirements.txt pins. Every other line is kept as it is, so the
image and requirements.txt cannot drift apart (tests/test_docker.py checks it). Plain text
parsing, standard library only: it runs on any base image's python3 before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def requirement_name(line: str) -> str | None:
    """The package a requirements line names (None for blank lines and comments)."""
    text = line.split("#", 1)[0].strip()
    match = NAME.match(text)
    return canonical(match.group(1)) if match else None


def image_requirements(text: str, left_out: set[str]) -> tuple[list[str], set[str]]:
    """The lines of ``text`` to install and the names of ``left_out`` that were found."""
    left_out = {canonical(name) for name in left_out}
    kept, found = [], set()
    for line in text.splitlines():
        name = requirement_name(line)
        if name in left_out:
            found.add(name)
        elif name is not None:
            kept.append(line.split("#", 1)[0].strip())
    return kept, found


def pinned_version(text: str, package: str) -> str:
    for line in text.splitlines():
        if requirement_name(line) == canonical(package):
            pin = re.search(r"==\s*([^\s;#]+)", line)
            if pin:
                return pin.group(1)
    raise SystemExit(f"requirements.txt pins no version of {package} (needs {package}==X.Y.Z)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("requirements")
    parser.add_argument("--from-base", nargs="*", default=[], help="packages the base image provides")
    parser.add_argument("--built", nargs="*", default=[], help="packages a builder stage compiles")
    parser.add_argument("--pin", help="print the version requirements.txt pins for this package")
    args = parser.parse_args(argv)
    text = Path(args.requirements).read_text()
    if args.pin:
        print(pinned_version(text, args.pin))
        return 0
    left_out = set(args.from_base) | set(args.built)
    kept, found = image_requirements(text, left_out)
    missing = {canonical(name) for name in left_out} - found
    if missing:  # a renamed or dropped package: the Dockerfile's list is stale
        print(f"not in {args.requirements}: {', '.join(sorted(missing))}", file=sys.stderr)
        return 1
    print("\n".join(kept))
    return 0


if __name__ == "__main__":
    sys.exit(main())
