"""Text: the ``nnx train --help`` output, included verbatim in the training guide.

Writes docs/_generated/cli_help.txt by running the command-line parser itself, so the
documented options are always those of the code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "_generated" / "cli_help.txt"


def main() -> None:
    env = dict(os.environ, COLUMNS="88", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "nnx", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=ROOT,
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(result.stdout)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
