"""A tally for the fuzz tests: every malformed input must end in a clear error (ValueError / TypeError with a
message), a counted skip, or a result the test checks as correct; anything else (an unnamed exception, a wrong result
returned silently) fails the test. Each tally prints one summary line (``pytest -s`` shows them) and, when
``FUZZ_REPORT`` names a file, appends it there as JSON."""

import json
import os
import traceback
from collections import Counter

CLEAR_ERRORS = (ValueError, TypeError)


class Tally:
    def __init__(self, surface: str):
        self.surface = surface
        self.counts = Counter()
        self.failures: list[str] = []

    def run(self, label: str, call, check=None):
        """Run `call()`: a clear error counts as such; a result goes to `check(result)`, which returns "correct",
        "skip" (a counted skip) or raises AssertionError for a wrong result."""
        self.counts["inputs"] += 1
        try:
            result = call()
        except CLEAR_ERRORS as error:
            if not str(error).strip():
                self.counts["crashes"] += 1
                self.failures.append(f"{label}: {type(error).__name__} without a message")
            else:
                self.counts["clear_errors"] += 1
            return None
        except Exception as error:  # noqa: BLE001 - the point is to catch what names nothing
            self.counts["crashes"] += 1
            self.failures.append(f"{label}: {type(error).__name__}: {str(error)[:200]}\n"
                                 + "".join(traceback.format_tb(error.__traceback__)[-3:]))
            return None
        try:
            outcome = check(result) if check is not None else "correct"
        except AssertionError as error:
            self.counts["silent_wrong"] += 1
            self.failures.append(f"{label}: wrong result: {error}")
            return result
        self.counts["skips" if outcome == "skip" else "correct"] += outcome if isinstance(outcome, int) else 1
        return result

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def finish(self, files_lost: int = 0) -> dict:
        self.counts["files_lost"] += files_lost
        summary = {"surface": self.surface, **{k: self.counts.get(k, 0) for k in (
            "inputs", "clear_errors", "skips", "correct", "crashes", "silent_wrong", "files_lost")}}
        print(f"\nFUZZ {json.dumps(summary)}")
        if os.environ.get("FUZZ_REPORT"):
            with open(os.environ["FUZZ_REPORT"], "a", encoding="utf-8") as f:
                f.write(json.dumps(summary) + "\n")
        assert not self.failures, "\n".join(self.failures[:10])
        assert summary["crashes"] == summary["silent_wrong"] == summary["files_lost"] == 0
        return summary
