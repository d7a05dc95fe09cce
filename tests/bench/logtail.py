"""What the benchmarks read of a worker's log: the whole lines appended since the last look
(a benchmark that re-reads a growing log at every poll loads the cores it measures), and a
line's RFC 3339 UTC timestamp."""


class LogTail:
    """The whole lines appended to the file `path` since the last `new_lines` (a line still
    being written waits for its newline)."""

    def __init__(self, path):
        self.path = path
        self.offset = 0

    def new_lines(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        whole = chunk.rfind(b"\n") + 1
        self.offset += whole
        return chunk[:whole].decode(errors="replace").splitlines()


# The message of taskhost's line saying a job's result is stored (its `done` line).
TASKHOST_DONE = "job done; result stored"


def stamp_of(line):
    """Seconds since the epoch of a worker's log line, as text (the stamp first) or as JSON
    (`LOG_FORMAT=json`: its `timestamp`)."""
    if line.startswith("{"):
        import json

        return parse_stamp(json.loads(line)["timestamp"])
    return parse_stamp(line.split()[0])


def parse_stamp(text):
    """Seconds since the epoch of a log line's RFC 3339 UTC timestamp
    (`2026-01-02T03:04:05.123456Z`)."""
    from datetime import datetime, timezone

    day, _, rest = text.rstrip("Z").partition("T")
    whole, _, frac = rest.partition(".")
    t = datetime.strptime(f"{day}T{whole}", "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return t.timestamp() + (float(f"0.{frac}") if frac else 0.0)
