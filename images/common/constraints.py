"""Print the pins of a lock file for the packages a vendor base image does not already have.

    python3 constraints.py LOCK < "$(pip list --format=freeze)"

The images built on an engine's own image (vLLM, SGLang, Ascend) keep every package of the base
as it is (the engine was built and tested with them) and take the shim's locked versions
(requirements/shim.txt) for the rest; both lists go to pip as constraints.
"""

from __future__ import annotations

import re
import sys


def name(line: str) -> str:
    return re.split(r"[=<>!~ ;\[]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


def main() -> None:
    present = {name(line) for line in sys.stdin if line.strip() and not line.startswith("#")}
    with open(sys.argv[1]) as lock:
        for line in lock:
            if line[:1].isalnum() and name(line) not in present:
                print(line.strip())


if __name__ == "__main__":
    main()
