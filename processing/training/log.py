"""The trainer's step log: an append-only JSON-lines file (one record per optimizer step), and its reader."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..rows import RowError, iter_jsonl


class JsonlLog:
    """Append-only JSON-lines log (one record per optimizer step), flushed per line so a crash loses at most one."""

    def __init__(self, path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._file = None

    def truncate_after(self, step: int) -> None:
        """Keep records with `step` <= step (a resumed run rewrites what came after its checkpoint) and drop a torn
        last line left by a kill."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("step", 0) <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8", buffering=1)
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_jsonl_log(path) -> list[dict]:
    """Every record of a step log; a torn last line (a killed run) is skipped."""
    return [record for _, record in iter_jsonl(path) if not isinstance(record, RowError)]


__all__ = ["JsonlLog", "read_jsonl_log"]
