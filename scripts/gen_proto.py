"""Regenerate the Python code for ``proto/`` into ``services/proto/`` (``services.gen_proto``).

    python scripts/gen_proto.py            # regenerate in place
    python scripts/gen_proto.py --out DIR  # write the package under DIR instead
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).absolute().parents[1]))  # run from a checkout without installing

from services.gen_proto import DEFAULT_OUT, generate  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the Python code for proto/ with grpcio-tools.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output package folder")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
