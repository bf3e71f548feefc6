"""Stand-in commands of the simulated devstack controller (stack.sh, openstack, tempest).

Each runs as `python -I -m sim.devstack_node.<cmd> <node root> ARGS...`
from a wrapper script `sim.devstack.make_devstack_node` writes; the node's
settings are in `<node root>/node.json`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Node:
    root: Path
    lab_dir: Path
    python: str
    hostname: str

    @property
    def devstack_dir(self) -> Path:
        return self.root / "devstack"

    @property
    def tempest_dir(self) -> Path:
        return self.root / "tempest"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def stacked_file(self) -> Path:
        return self.root / "state" / "stacked.json"

    def fault(self, name: str) -> str | None:
        """The content of the lab's fault file `name`, or None when it is not set."""
        path = self.lab_dir / "faults" / name
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None


def load_node(root: str) -> Node:
    """The node whose files live under `root`."""
    data = json.loads((Path(root) / "node.json").read_text(encoding="utf-8"))
    return Node(Path(data["root"]), Path(data["lab_dir"]), data["python"], data["hostname"])


def log(path: Path, line: str) -> None:
    """Append one timestamped line to a service log (devstack's journal style)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%b %d %H:%M:%S")
    with path.open("a", encoding="utf-8") as fh:
        fh.write(f"{stamp} {path.stem}[{1000 + len(path.stem)}]: {line}\n")


def die(message: str, code: int = 1) -> None:
    """Print an error on stderr and exit, as the real commands do."""
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()
    raise SystemExit(code)
