#!/usr/bin/env python3
"""Side-by-side benchmark: taskhost against the guide's worker design (guide_worker.py).

    tests/bench/run.sh [FLAGS]                          # installs and builds, then runs this
    $VENV/bin/python tests/bench/churn.py [FLAGS]       # VENV from tests/s3/setup-venv.sh --bench

It starts the official Pub/Sub emulator and the S3 test server (tests/s3/serve.py) on free
ports, then runs each contender on its own fresh topic, subscriptions and bucket, with the
same job messages (step-counter jobs: {"job_id", "steps", "step_ms"}):

* taskhost: `taskhost setup`, `taskhost module push step_counter.wasm`, `taskhost submit`,
  then P `taskhost worker` processes; a job is done when `jobs/<id>/result` holds the right
  sum.
* guide: the topic, subscriptions and bucket made with the official clients, the same
  messages published, then P `guide_worker.py` processes (one job per process); a job is
  done when `<id>/result.txt` holds the right sum.

Scenarios:

* `--scenario churn` (default): 3 worker processes, 40 jobs of uniform(30..69) steps of
  100 ms; every uniform(3, 6) s one random worker is SIGKILLed and restarted at once (the
  same kill schedule for every contender). taskhost runs twice (WORKER_SLOTS=1 and 2), the
  guide once. A restarted worker keeps its cache directory (a container restarted on its
  node keeps its disk), unless --restart-on new-node. Measures the wall time from the first worker start to the last correct result.
* `--scenario small`: 1 worker process, no kills, 200 one-step jobs (step_ms 0); taskhost
  with its default WORKER_SLOTS. Reports jobs/s and S3 requests per job (counted from the S3
  server's request log, without this script's own requests). `--phases`: taskhost logs its
  debug lines as JSON, and where a job's time goes (pull, claim, run, result, ack) is
  printed after the report, as `ceiling.py --phases` does on the embedded default.
* `--scenario metrics`: the cost of metrics and heartbeats. taskhost only, 1 worker, 400
  one-step jobs, run --rounds times (3) with both off and on alternately (on: METRICS_ADDR
  set and `/metrics` scraped every SCRAPE_INTERVAL, 1 s, much more often than Prometheus's
  usual 15 s, and HEARTBEAT_SECONDS=1, 60 times the default rate; off: HEARTBEAT_SECONDS=0). The rate of each run is taken from the worker's own log (jobs done per second
  between its first and its last `job done` line: no polling granularity); the median of
  each side is compared (goal: under 2 % slower with metrics). After each run's last
  result the worker's CPU time (user + system, less sensitive to a loaded machine than the
  rate) is read, and after IDLE_WAIT (20 s) the idle worker's resident memory (VmRSS, VmHWM,
  anonymous and file-backed from smaps_rollup; goal with metrics on: under 40 MB).
  `--variant 'NAME[@BINARY] [KEY=VALUE ...]'` (repeatable) replaces off/on by variants,
  each with metrics and heartbeats on, its own worker binary and extra environment, run
  once per round in turn (side by side), and reports each one's idle memory; `--smaps`
  prints each idle worker's resident memory by mapping (/proc/PID/smaps).

After each contender the workers are stopped (SIGTERM), then the job subscription is pulled
for one ack deadline + 3 s (--leftover-wait), so that leases held by killed workers have
lapsed, and the dead-letter subscription (`<topic>-dead-letter-sub`) for 3 s: both must
deliver nothing (messages are pulled, never acked). A lease that a client extended past the
ack deadline is not seen. The guide's subscription gets the guide's dead-letter policy (5
delivery attempts, --guide-max-delivery-attempts); taskhost's is what `taskhost setup` makes.

Exit status: 0 when every contender finished every job correctly with nothing dead-lettered
and nothing left; 1 otherwise (the figures are printed either way, with the log directory);
2 when the benchmark itself could not run (a server did not start, a command failed).
The time results are discovered by polling the bucket every POLL_INTERVAL (0.5 s); in
scenario small by reading the workers' logs every POLL_INTERVAL, the bucket only once they
name every job (and every SAFETY_POLL, 10 s), the time being the last `done` line's.
"""

import argparse
import collections
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ceiling import PHASES_ENV, phase_times
from logtail import TASKHOST_DONE, LogTail, parse_stamp, stamp_of

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1
except ImportError as e:  # pragma: no cover - a usage error, said in one sentence
    sys.exit(
        f"churn.py: {e}: run it with the venv's python (tests/s3/setup-venv.sh --bench prints "
        "the venv) or through tests/bench/run.sh"
    )

REPO = Path(__file__).resolve().parents[2]
GUIDE_WORKER = Path(__file__).resolve().parent / "guide_worker.py"
SERVE_PY = REPO / "tests/s3/serve.py"
EMULATOR_BIN = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"

# The key pair serve.py is told to accept (host/tests/all/support/s3.rs uses the same).
S3_ACCESS_KEY_ID = "taskhost-test"
S3_SECRET_ACCESS_KEY = "taskhost-test-secret"
# Marks this script's own S3 requests in the server's request log, so they are not counted.
DRIVER_USER_AGENT = "taskhost-bench-driver"
PROJECT_ID = "bench"

EMULATOR_START_TIMEOUT = 90.0  # s: the JVM is slow to start while cargo builds
S3_START_TIMEOUT = 30.0  # s
CLI_TIMEOUT = 120.0  # s, for one `taskhost setup|module push|submit`
RPC_TIMEOUT = 30.0  # s, for one Pub/Sub call of this script
POLL_INTERVAL = 0.5  # s between two looks at the bucket (scenario small: at the logs)
SAFETY_POLL = 10.0  # s, scenario small: the bucket is read this often whatever the logs say
TICK = 0.1  # s, the main loop's sleep
# A worker's line saying a job's result is stored (taskhost; guide_worker.py).
DONE_LINE = re.compile(re.escape(TASKHOST_DONE) + r" job=(?P<th>\S+)|\] (?P<guide>\S+): done, sum ")
STOP_TIMEOUT = 20.0  # s a worker gets to exit after SIGTERM before SIGKILL
MAX_CRASHES = 20  # workers that exit by themselves before a contender is given up
KILL_EVERY = (3.0, 6.0)  # s, uniform: the kill loop's period
SCRAPE_INTERVAL = 1.0  # s between two scrapes of a worker's /metrics (scenario metrics)
HEARTBEAT_INTERVAL = 1  # s between two heartbeats, metrics on (scenario metrics)
IDLE_WAIT = 20.0  # s a worker idles before its resident memory is read (scenario metrics)


class BenchError(Exception):
    """The benchmark could not run (not a contender's result): exit 2 with this sentence."""


# ---------------------------------------------------------------------------------------------
# Child processes


class Children:
    """Every process this script starts. Each gets its own session (so a Ctrl-C reaches only
    this script), and all are SIGKILLed by PID (a group's leader: by process group) when the
    script ends, however it ends."""

    def __init__(self):
        self.procs = []  # (Popen, kill the whole process group?)

    def start(self, argv, *, env, cwd, stdout, stderr=None, group=False):
        """Starts `argv` with stdout (and stderr, if not given separately) into files."""
        out = open(stdout, "ab")
        err = open(stderr, "ab") if stderr else subprocess.STDOUT
        try:
            proc = subprocess.Popen(
                [str(a) for a in argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as e:
            raise BenchError(f"cannot start {argv[0]}: {e}") from e
        finally:
            out.close()
            if stderr:
                err.close()
        self.procs.append((proc, group))
        return proc

    def kill(self, proc):
        """SIGKILL (a node vanishing) and reap. Never signals a process already reaped."""
        group = next((g for p, g in self.procs if p is proc), False)
        if proc.poll() is None:
            try:
                if group:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
            except ProcessLookupError:
                pass
        proc.wait()
        self.procs = [(p, g) for p, g in self.procs if p is not proc]

    def stop(self, proc, timeout=STOP_TIMEOUT):
        """SIGTERM, then SIGKILL if it has not exited within `timeout`. Returns its status."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill(proc)
        return proc.returncode

    def kill_all(self):
        for proc, _ in reversed(list(self.procs)):
            self.kill(proc)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Loopback only: never through a proxy.
NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def answers(url):
    """GET `url` answers 200 within 2 s."""
    try:
        with NO_PROXY_OPENER.open(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def tail(path, lines=40):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def start_server(children, name, argv_for_port, url_for_port, log_dir, timeout, env=None):
    """Starts a server on a free port (3 tries, for the race between our probe and its bind)
    and waits until `url_for_port(port)` answers. Returns (process, port)."""
    for attempt in range(3):
        port = free_port()
        log = log_dir / f"{name}-{attempt}.log"
        proc = children.start(
            argv_for_port(port), env=env, cwd=log_dir, stdout=log, group=(name == "emulator")
        )
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                if "Address already in use" in tail(log, 200):
                    break  # lost the port race: try another one
                raise BenchError(
                    f"the {name} exited ({proc.returncode}) before answering; {log}:\n{tail(log)}"
                )
            if answers(url_for_port(port)):
                return proc, port
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the {name} did not answer on port {port} within {timeout:.0f} s; "
                    f"{log}:\n{tail(log)}"
                )
            time.sleep(0.2)
        children.kill(proc)
    raise BenchError(f"the {name} could not bind a free port in 3 tries")


# ---------------------------------------------------------------------------------------------
# Jobs and contenders


def make_jobs(scenario, seed, count=None):
    """The job documents, the same for every contender."""
    rng = random.Random(seed)
    if scenario == "churn":
        n = count or 40
        return [
            {"job_id": f"job-{i:03d}", "steps": rng.randint(30, 69), "step_ms": 100}
            for i in range(n)
        ]
    n = count or (400 if scenario == "metrics" else 200)
    return [{"job_id": f"job-{i:03d}", "steps": 1, "step_ms": 0} for i in range(n)]


def expected_result(job):
    """What step-counter returns (guest-tasks/step-counter/src/lib.rs): the sum of 1..=steps."""
    n = job["steps"]
    return {"job_id": job["job_id"], "steps": n, "sum": n * (n + 1) // 2}


@dataclass
class Contender:
    label: str  # as printed: "taskhost 2 slots", "guide"
    kind: str  # "taskhost" or "guide"
    tag: str  # prefix of its topic, subscriptions and bucket
    slots: int | None = None  # WORKER_SLOTS; None: taskhost's default
    metrics: bool = False  # METRICS_ADDR set and /metrics scraped (scenario metrics)
    variant: str | None = None  # --variant's name (scenario metrics)
    taskhost: Path | None = None  # the worker binary, when not --taskhost (a --variant's)
    env: dict = field(default_factory=dict)  # extra worker environment (a --variant's)

    @property
    def topic(self):
        return f"{self.tag}-jobs"

    @property
    def subscription(self):
        return f"{self.topic}-sub"

    @property
    def dead_letter_topic(self):
        return f"{self.topic}-dead-letter"  # taskhost setup's default name

    @property
    def dead_letter_subscription(self):
        return f"{self.dead_letter_topic}-sub"

    @property
    def bucket(self):
        return f"bench-{self.tag}"

    def result_key(self, job_id):
        return f"jobs/{job_id}/result" if self.kind == "taskhost" else f"{job_id}/result.txt"


@dataclass
class Outcome:
    contender: Contender
    jobs: int
    correct: int = 0
    wrong: dict = field(default_factory=dict)  # job_id -> what the result said
    wall: float | None = None  # first worker start -> last result seen; None: not all seen
    elapsed: float = 0.0  # how long it ran (the time limit if it did not finish)
    kills: int = 0
    crashes: int = 0  # workers that exited by themselves
    dead_lettered: int = 0
    left_on_subscription: int = 0
    leftover_wait: float = 0.0  # how long the job subscription was pulled for that
    s3_requests: collections.Counter = field(default_factory=collections.Counter)
    job_starts: int = 0  # runs started (first runs and resumes), from the worker logs
    resumes: int = 0  # of which resumed from a checkpoint
    log_dir: Path | None = None
    log_rate: float | None = None  # jobs/s from the workers' `job done` lines (metrics)
    idle_rss_kb: list = field(default_factory=list)  # each worker's VmRSS once idle (metrics)
    idle_memory: list = field(default_factory=list)  # each worker's memory breakdown, idle
    cpu_s: float | None = None  # the workers' CPU time (user + system) when all results were in
    scrapes: int = 0  # /metrics answers (metrics on)

    @property
    def finished(self):
        return self.correct == self.jobs

    @property
    def clean(self):
        return (
            self.finished and not self.wrong and self.dead_lettered == 0
            and self.left_on_subscription == 0
        )

    def summary(self):
        done = f"{self.contender.label} {self.correct}/{self.jobs}"
        if self.wall is None:  # stopped by the time limit (or by crashing workers)
            return f"{done} in >{self.elapsed:.0f} s (unfinished)"
        wrong = f" ({len(self.wrong)} wrong)" if self.wrong else ""
        return f"{done}{wrong} in {self.wall:.1f} s"


class Bench:
    """The servers and clients every contender uses."""

    def __init__(self, args, children, log_dir):
        self.args = args
        self.children = children
        self.log_dir = log_dir
        self.python = sys.executable  # the venv's: it has moto, google-cloud-pubsub, boto3
        self.s3_log = log_dir / "s3-requests.log"
        self.emulator_host = None
        self.s3_endpoint = None

    # -- servers

    def start_servers(self):
        print("starting the Pub/Sub emulator and the S3 server ...", file=sys.stderr, flush=True)
        _, port = start_server(
            self.children,
            "emulator",
            lambda p: [EMULATOR_BIN, "--host=127.0.0.1", f"--port={p}"],
            lambda p: f"http://127.0.0.1:{p}/",
            self.log_dir,
            EMULATOR_START_TIMEOUT,
            env=dict(os.environ),  # as the Rust tests start it: Java finds what it needs
        )
        self.emulator_host = f"127.0.0.1:{port}"
        # The Python Pub/Sub client reads this itself (no credentials, plain HTTP/2).
        os.environ["PUBSUB_EMULATOR_HOST"] = self.emulator_host
        _, port = start_server(
            self.children,
            "S3 server",
            lambda p: [self.python, SERVE_PY, str(p), "--request-log", self.s3_log],
            lambda p: f"http://127.0.0.1:{p}/_taskhost/health",
            self.log_dir,
            S3_START_TIMEOUT,
            env=clean_env(
                {
                    "S3_TEST_ACCESS_KEY_ID": S3_ACCESS_KEY_ID,
                    "S3_TEST_SECRET_ACCESS_KEY": S3_SECRET_ACCESS_KEY,
                }
            ),
        )
        self.s3_endpoint = f"http://127.0.0.1:{port}"
        self.s3 = boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=S3_ACCESS_KEY_ID,
            aws_secret_access_key=S3_SECRET_ACCESS_KEY,
            region_name="auto",
            config=Config(
                s3={"addressing_style": "path"},
                user_agent_extra=DRIVER_USER_AGENT,
                connect_timeout=5,
                read_timeout=30,
                retries={"max_attempts": 3, "mode": "standard"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self.publisher = pubsub_v1.PublisherClient()
        self.subscriber = pubsub_v1.SubscriberClient()
        print(
            f"emulator on {self.emulator_host}, S3 server on {self.s3_endpoint}",
            file=sys.stderr,
            flush=True,
        )

    def s3_log_offset(self):
        try:
            return self.s3_log.stat().st_size
        except FileNotFoundError:
            return 0

    def s3_requests_between(self, start, end):
        """The workers' S3 requests logged between two offsets, by kind (LIST, GET, PUT,
        HEAD, ...), without this script's own."""
        counts = collections.Counter()
        with open(self.s3_log, "rb") as f:
            f.seek(start)
            data = f.read(end - start).decode(errors="replace")
        for line in data.splitlines():
            parts = line.split("\t")
            if len(parts) < 4 or DRIVER_USER_AGENT in parts[3]:
                continue
            method, uri = parts[0], parts[1]
            path, _, query = uri.partition("?")
            is_bucket = path.strip("/").count("/") == 0
            kind = "LIST" if method == "GET" and (is_bucket or "list-type" in query) else method
            counts[kind] += 1
        return counts

    # -- environment of the contenders' processes

    def worker_env(self, c, home):
        env = {
            "PROJECT_ID": PROJECT_ID,
            "PUBSUB_EMULATOR_HOST": self.emulator_host,
            "TOPIC_ID": c.topic,
            "SUBSCRIPTION_ID": c.subscription,
            "ACK_DEADLINE_SECONDS": str(self.args.ack_deadline),
            "R2_BUCKET_NAME": c.bucket,
            "R2_S3_ENDPOINT_URL": self.s3_endpoint,
            "R2_AWS_ACCESS_KEY_ID": S3_ACCESS_KEY_ID,
            "R2_AWS_SECRET_ACCESS_KEY": S3_SECRET_ACCESS_KEY,
            "HOME": str(home),
        }
        if c.kind == "taskhost":
            env["RUST_LOG"] = "info"
            # Workers are killed every few seconds here, far more often than nodes die: a
            # job may meet three kills in a row before its first checkpoint write, which
            # MAX_CRASHES (default 3) would take for a job that kills its workers.
            env["MAX_CRASHES"] = "1000"
            if c.slots is not None:
                env["WORKER_SLOTS"] = str(c.slots)
            if self.args.phases:
                env.update(PHASES_ENV)
        else:
            env["PYTHONUNBUFFERED"] = "1"
        return clean_env(env)

    # -- one contender

    def prepare_taskhost(self, c, jobs, cdir):
        """`taskhost setup`, `module push`, `submit`: topics, subscriptions, bucket, jobs."""
        env = self.worker_env(c, cdir)
        env["TASKHOST_CACHE_DIR"] = str(cdir / "cli-cache")
        self.run_cli(["setup"], env, cdir)
        pushed = self.run_cli(["module", "push", self.args.wasm], env, cdir)
        module = (pushed.strip().splitlines() or [""])[-1].strip()
        if not module.startswith("sha256:"):
            raise BenchError(f"`taskhost module push` printed no module name: {pushed!r}")
        jobs_file = cdir / "jobs.jsonl"
        jobs_file.write_text("".join(json.dumps(j) + "\n" for j in jobs))
        self.run_cli(["submit", "--quiet", "--module", module, jobs_file], env, cdir)

    def run_cli(self, args, env, cdir):
        """Runs `taskhost ARGS` to its end (at most CLI_TIMEOUT); returns its stdout."""
        name = "-".join(str(a) for a in args[:2] if not str(a).startswith(("-", "/")))
        out, err = cdir / f"cli-{name}.stdout", cdir / f"cli-{name}.stderr"
        proc = self.children.start(
            [self.args.taskhost, *args], env=env, cwd=cdir, stdout=out, stderr=err
        )
        try:
            proc.wait(CLI_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.children.kill(proc)
            raise BenchError(
                f"`taskhost {name}` did not finish within {CLI_TIMEOUT:.0f} s:\n{tail(err)}"
            )
        self.children.kill(proc)  # reaps it and forgets it
        if proc.returncode != 0:
            raise BenchError(
                f"`taskhost {' '.join(map(str, args))}` failed ({proc.returncode}):\n"
                f"{tail(out)}\n{tail(err)}"
            )
        return out.read_text(errors="replace")

    def prepare_guide(self, c, jobs):
        """The guide's setup with the official clients: bucket, topics, the subscription
        (ack deadline, dead-letter policy), then the same messages published."""
        self.s3.create_bucket(Bucket=c.bucket)
        pub, sub = self.publisher, self.subscriber
        topic = pub.topic_path(PROJECT_ID, c.topic)
        dlt = pub.topic_path(PROJECT_ID, c.dead_letter_topic)
        pub.create_topic(request={"name": topic}, timeout=RPC_TIMEOUT)
        pub.create_topic(request={"name": dlt}, timeout=RPC_TIMEOUT)
        request = {
            "name": sub.subscription_path(PROJECT_ID, c.subscription),
            "topic": topic,
            "ack_deadline_seconds": self.args.ack_deadline,
        }
        if self.args.guide_max_delivery_attempts:
            request["dead_letter_policy"] = {
                "dead_letter_topic": dlt,
                "max_delivery_attempts": self.args.guide_max_delivery_attempts,
            }
        sub.create_subscription(request=request, timeout=RPC_TIMEOUT)
        sub.create_subscription(
            request={
                "name": sub.subscription_path(PROJECT_ID, c.dead_letter_subscription),
                "topic": dlt,
            },
            timeout=RPC_TIMEOUT,
        )
        futures = [pub.publish(topic, json.dumps(j).encode()) for j in jobs]
        for f in futures:
            f.result(timeout=RPC_TIMEOUT)

    def run(self, c, jobs, workers, kill_loop):
        """Runs contender `c` on fresh state and returns its Outcome."""
        cdir = self.log_dir / c.tag
        cdir.mkdir()
        print(f"== {c.label}: preparing {len(jobs)} jobs", file=sys.stderr, flush=True)
        if c.kind == "taskhost":
            self.prepare_taskhost(c, jobs, cdir)
            argv = [c.taskhost or self.args.taskhost, "worker"]
        else:
            self.prepare_guide(c, jobs)
            argv = [self.python, GUIDE_WORKER]

        outcome = Outcome(contender=c, jobs=len(jobs), log_dir=cdir)
        expected = {j["job_id"]: expected_result(j) for j in jobs}
        pending = set(expected)  # jobs whose result has not been seen yet
        pool = WorkerPool(self, c, argv, workers, cdir)
        kills = random.Random(f"{self.args.seed}-kills")  # the same schedule for everyone
        s3_start = self.s3_log_offset()
        print(
            f"== {c.label}: {workers} worker process(es)"
            + (", kill loop on" if kill_loop else ""),
            file=sys.stderr,
            flush=True,
        )
        t0, t0_epoch = time.monotonic(), time.time()
        # Scenario small: results are discovered from the workers' own `done` lines (their
        # timestamps), and the bucket is read only once they name every job (then until it
        # holds every result): a listing of thousands of keys every POLL_INTERVAL is load
        # on the one-request-at-a-time S3 server and the 2 cores the contenders share.
        by_logs = self.args.scenario == "small"
        log_done = {}  # job id -> epoch seconds of its first `done` line
        scraper = Scraper(pool) if c.metrics else None
        try:
            pool.start_all()
            if scraper:
                scraper.start()
            deadline = t0 + self.args.time_limit
            next_kill = t0 + kills.uniform(*KILL_EVERY) if kill_loop else float("inf")
            next_poll = next_report = t0
            next_safety = t0 + SAFETY_POLL
            while pending:
                now = time.monotonic()
                if now >= deadline:
                    break
                outcome.crashes += pool.restart_exited()
                if outcome.crashes > MAX_CRASHES:
                    print(
                        f"   {c.label}: {outcome.crashes} workers exited by themselves: giving up",
                        file=sys.stderr,
                    )
                    break
                if now >= next_kill:
                    pool.kill_and_restart(kills.randrange(workers))
                    outcome.kills += 1
                    next_kill = now + kills.uniform(*KILL_EVERY)
                if now >= next_poll:
                    next_poll = now + POLL_INTERVAL
                    if by_logs:
                        log_done.update(pool.done_lines(log_done))
                    if not by_logs or pending <= log_done.keys() or now >= next_safety:
                        next_safety = now + SAFETY_POLL
                        self.check_results(c, expected, pending, outcome)
                    if not pending:
                        outcome.wall = time.monotonic() - t0
                        if by_logs and expected.keys() <= log_done.keys():
                            # The last job's own `done` line, not when the bucket was read.
                            last = max(log_done[j] for j in expected)
                            outcome.wall = min(outcome.wall, max(0.0, last - t0_epoch))
                if now >= next_report:
                    print(
                        f"   {c.label}: {len(expected) - len(pending)}/{len(expected)} results, "
                        f"{outcome.kills} kills, {now - t0:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )
                    next_report = now + 10
                time.sleep(TICK)
            outcome.elapsed = time.monotonic() - t0
            if self.args.scenario == "metrics" and not pending:
                outcome.cpu_s = pool.cpu_seconds()
                time.sleep(IDLE_WAIT)
                outcome.idle_rss_kb = pool.resident_kb()
                outcome.idle_memory = pool.memory_breakdown()
                if self.args.smaps:
                    pool.write_smaps(c)
        finally:
            if scraper:
                outcome.scrapes = scraper.stop()
            pool.stop_all()
        outcome.log_rate = pool.done_rate()
        outcome.s3_requests = self.s3_requests_between(s3_start, self.s3_log_offset())
        outcome.job_starts, outcome.resumes = pool.count_job_starts()
        outcome.leftover_wait = self.leftover_wait()
        outcome.left_on_subscription = self.count_left(c.subscription, outcome.leftover_wait)
        outcome.dead_lettered = self.count_left(c.dead_letter_subscription, 3.0)
        return outcome

    def check_results(self, c, expected, pending, outcome):
        """One look at the bucket: reads each new result object and checks its sum."""
        prefix = "jobs/" if c.kind == "taskhost" else ""
        keys, token = set(), None
        try:
            for _ in range(100):  # pages of 1000 keys: far more than any scenario has
                kw = {"Bucket": c.bucket, "Prefix": prefix}
                if token:
                    kw["ContinuationToken"] = token
                page = self.s3.list_objects_v2(**kw)
                keys.update(o["Key"] for o in page.get("Contents", []))
                token = page.get("NextContinuationToken")
                if not page.get("IsTruncated") or not token:
                    break
        except (BotoCoreError, ClientError) as e:
            print(f"   listing {c.bucket} failed (trying again): {e}", file=sys.stderr)
            return
        for job_id in sorted(pending):
            key = c.result_key(job_id)
            if key not in keys:
                continue
            try:
                body = self.s3.get_object(Bucket=c.bucket, Key=key)["Body"].read()
            except (BotoCoreError, ClientError) as e:
                print(f"   reading {key} failed (trying again): {e}", file=sys.stderr)
                continue
            pending.discard(job_id)
            try:
                doc = json.loads(body)
                ok = all(doc.get(k) == v for k, v in expected[job_id].items())
            except (ValueError, AttributeError):
                ok = False
            if ok:
                outcome.correct += 1
            else:
                outcome.wrong[job_id] = body.decode(errors="replace")[:200]

    def leftover_wait(self):
        """How long to pull the job subscription after the workers stopped: one ack deadline
        (+3 s) by default, so that leases a killed worker held have lapsed, unless its client
        extended them further (a streaming pull's stream deadline can be longer)."""
        if self.args.leftover_wait is not None:
            return self.args.leftover_wait
        return self.args.ack_deadline + 3.0

    def count_left(self, subscription, seconds):
        """Messages that `subscription` delivers within `seconds` (pulled, not acked)."""
        path = self.subscriber.subscription_path(PROJECT_ID, subscription)
        seen = set()
        until = time.monotonic() + seconds
        for _ in range(100):
            if time.monotonic() >= until:
                break
            try:
                r = self.subscriber.pull(
                    request={"subscription": path, "max_messages": 100}, timeout=3
                )
                seen.update(m.message.message_id for m in r.received_messages)
            except gexc.DeadlineExceeded:
                pass
            time.sleep(0.5)
        return len(seen)


class WorkerPool:
    """The P worker processes of one contender, each with its log files and (taskhost) its
    own cache directory (TASKHOST_CACHE_DIR: compiled modules and the record of held jobs).
    With --restart-on node (the default) a worker is restarted on its node: the directory is
    kept across restarts like a node's disk, so the restarted taskhost worker hands its dead
    predecessor's jobs back at once. With --restart-on new-node every start gets a fresh one:
    a node that vanished and was replaced (its leases lapse; its module is compiled again)."""

    def __init__(self, bench, contender, argv, count, cdir):
        self.bench = bench
        self.argv = argv
        self.count = count
        self.cdir = cdir
        self.tails = {}  # log file -> its LogTail (done_lines reads only what was appended)
        self.taskhost = contender.kind == "taskhost"
        self.procs = [None] * count
        self.starts = [0] * count
        self.envs = [bench.worker_env(contender, cdir) for _ in range(count)]
        # Each worker's /metrics (metrics on): a port of its own, kept across restarts.
        self.metrics_urls = []
        if bench.args.scenario == "metrics" and self.taskhost:
            # Heartbeats belong to the cost measured: off (0) beside metrics off; on, every
            # HEARTBEAT_INTERVAL (60 times the default's rate, the most the worker allows).
            for env in self.envs:
                env["HEARTBEAT_SECONDS"] = str(HEARTBEAT_INTERVAL if contender.metrics else 0)
                env.update(contender.env)
        if contender.metrics:
            for env in self.envs:
                port = free_port()
                env["METRICS_ADDR"] = f"127.0.0.1:{port}"
                self.metrics_urls.append(f"http://127.0.0.1:{port}/metrics")

    def start(self, i):
        log = self.cdir / f"w{i}.{self.starts[i]}.log"
        env = dict(self.envs[i])
        if self.taskhost:
            fresh = self.bench.args.restart_on == "new-node"
            cache = self.cdir / (f"w{i}.{self.starts[i]}-cache" if fresh else f"w{i}-cache")
            cache.mkdir(exist_ok=True)
            env["TASKHOST_CACHE_DIR"] = str(cache)
        self.starts[i] += 1
        self.procs[i] = self.bench.children.start(self.argv, env=env, cwd=self.cdir, stdout=log)

    def start_all(self):
        for i in range(self.count):
            self.start(i)

    def kill_and_restart(self, i):
        self.bench.children.kill(self.procs[i])
        self.start(i)

    def restart_exited(self):
        """Restarts workers that exited by themselves; returns how many."""
        n = 0
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                log = self.cdir / f"w{i}.{self.starts[i] - 1}.log"
                print(
                    f"   worker {i} exited by itself ({p.returncode}); {log}:\n{tail(log, 10)}",
                    file=sys.stderr,
                )
                self.bench.children.kill(p)
                self.start(i)
                n += 1
        return n

    def stop_all(self):
        for p in self.procs:
            if p is not None:
                self.bench.children.stop(p)

    def resident_kb(self):
        """Each running worker's resident memory (VmRSS, kB)."""
        sizes = []
        for p in self.procs:
            try:
                status = Path(f"/proc/{p.pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]))
        return sizes

    def cpu_seconds(self):
        """The running workers' CPU time so far (user + system, /proc/PID/stat), seconds:
        less sensitive than the rate to other processes on a loaded machine."""
        ticks = 0
        for p in self.procs:
            try:
                fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def memory_breakdown(self):
        """Each running worker's VmHWM, anonymous and file-backed resident memory (kB, from
        /proc/PID/status and smaps_rollup) and its thread count."""
        out = []
        for p in self.procs:
            try:
                status = Path(f"/proc/{p.pid}/status").read_text()
                rollup = Path(f"/proc/{p.pid}/smaps_rollup").read_text()
            except OSError:
                continue
            fields = {}
            for line in (status + rollup).splitlines():
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    fields[key] = int(parts[0])
            out.append(
                {
                    "hwm": fields.get("VmHWM", 0),
                    "anon": fields.get("Anonymous", 0),
                    "file": fields.get("Rss", 0) - fields.get("Anonymous", 0),
                    "threads": fields.get("Threads", 0),
                }
            )
        return out

    def write_smaps(self, c):
        """--smaps: each running worker's resident memory by mapping (/proc/PID/smaps, summed
        per name: the binary, each library, [heap], each thread's stack and malloc arena as
        [anon]), printed largest first and kept as smaps-<tag>-w<i>.txt in the log
        directory."""
        for i, p in enumerate(self.procs):
            try:
                text = Path(f"/proc/{p.pid}/smaps").read_text()
            except OSError:
                continue
            (self.cdir / f"smaps-{c.tag}-w{i}.txt").write_text(text)
            by_name = collections.Counter()
            name = None
            for line in text.splitlines():
                head = line.split()
                if head and "-" in head[0] and ":" not in head[0]:
                    # A mapping's first line: range perms offset dev inode [name].
                    name = " ".join(head[5:]) or "[anon]"
                    name = f"{name} {head[1]}"
                elif head and head[0] == "Rss:":
                    by_name[name] += int(head[1])
            top = ", ".join(f"{n} {kb / 1024:.1f}" for n, kb in by_name.most_common(10) if kb)
            print(f"   {c.label} w{i} smaps (MB): {top}", file=sys.stderr, flush=True)

    def done_rate(self):
        """Jobs done per second between the first and the last `job done` line of the
        workers' logs (their own timestamps), or None with fewer than two."""
        stamps = []
        for log in self.cdir.glob("w*.log"):
            for line in log.read_text(errors="replace").splitlines():
                done = done_of(line)
                if done and done[0] == "th":
                    stamps.append(done[2])
        if len(stamps) < 2 or max(stamps) <= min(stamps):
            return None
        return (len(stamps) - 1) / (max(stamps) - min(stamps))

    def done_lines(self, seen):
        """Job id -> epoch seconds of the workers' `done` lines for jobs not in `seen`:
        taskhost's `job done; result stored job=ID` and guide_worker.py's `ID: done, sum N`,
        each written after the job's result (their own RFC 3339 UTC timestamps)."""
        found = {}
        for log in self.cdir.glob("w*.log"):
            for line in self.tails.setdefault(log, LogTail(log)).new_lines():
                done = done_of(line)
                if done and done[1] not in seen and done[1] not in found:
                    found[done[1]] = done[2]
        return found

    def count_job_starts(self):
        """Runs started and resumes, from the logs: step-counter logs `starting N steps` or
        `resuming at step K`; guide_worker.py logs `starting at step K`."""
        starts = resumes = 0
        for log in self.cdir.glob("w*.log"):
            for line in log.read_text(errors="replace").splitlines():
                if "resuming at step" in line:
                    starts, resumes = starts + 1, resumes + 1
                elif "starting at step " in line:
                    starts += 1
                    resumes += not line.rstrip().split("starting at step ")[1].startswith("0 ")
                elif "starting " in line and " steps (attempt" in line:
                    starts += 1
        return starts, resumes


class Scraper:
    """Scrapes every worker's /metrics every SCRAPE_INTERVAL on a thread, as Prometheus
    would, until stopped; counts the answers."""

    def __init__(self, pool):
        import threading

        self.pool = pool
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.answers = 0

    def start(self):
        self.thread.start()

    def loop(self):
        while not self.done.wait(SCRAPE_INTERVAL):
            for url in self.pool.metrics_urls:
                try:
                    with urllib.request.urlopen(url, timeout=2) as r:
                        if r.status == 200 and b"taskhost_jobs_ended_total" in r.read():
                            self.answers += 1
                except OSError:
                    pass  # not up yet, or restarting

    def stop(self):
        self.done.set()
        self.thread.join()
        return self.answers


def clean_env(extra):
    """A minimal environment: PATH (and the locale) plus `extra`; no proxies, no cloud keys."""
    env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL") if k in os.environ}
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------
# Report


def detail(o, per_job):
    req = o.s3_requests
    total = sum(req.values())
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(req.items()))
    text = (
        f"   {o.summary()}: {len(o.wrong)} wrong, {o.kills} kills, {o.crashes} crashed, "
        f"{o.job_starts} runs started ({o.resumes} resumed), {o.dead_lettered} dead-lettered, "
        f"{o.left_on_subscription} left on the subscription (pulled for {o.leftover_wait:.0f} s "
        f"after the workers stopped); S3 requests {total} ({kinds})"
    )
    if per_job:
        text += f" = {total / o.jobs:.2f}/job"
    for job_id, body in sorted(o.wrong.items())[:5]:
        text += f"\n     wrong result for {job_id}: {body}"
    return text


def ratio(guide, host):
    """guide time / taskhost time (above 1: taskhost is faster). When one side did not
    finish, the time it ran bounds the ratio (`<` or `>`); when neither did, there is none."""
    if guide.wall is not None and host.wall is not None and not guide.wrong and not host.wrong:
        return f"{guide.wall / host.wall:.2f}x"
    if guide.wall is not None and host.wall is None:
        return f"<{guide.wall / host.elapsed:.2f}x"
    if guide.wall is None and host.wall is not None:
        return f">{guide.elapsed / host.wall:.2f}x"
    return "n/a"


def median(values):
    values = sorted(values)
    n = len(values)
    return (values[n // 2] + values[(n - 1) // 2]) / 2 if n else None


def spread(values):
    """`median (min..max)` of the values, or n/a."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a", None
    m = median(values)
    return f"{m:.2f} ({min(values):.2f}..{max(values):.2f})", m


def report_metrics(outcomes):
    """Scenario metrics: the rate and CPU time per job with metrics off and on (medians and
    spread over the rounds), and idle memory."""
    for o in outcomes:
        rate = f"{o.log_rate:.1f}" if o.log_rate else "n/a"
        rss = ", ".join(f"{kb / 1024:.1f}" for kb in o.idle_rss_kb) or "n/a"
        mem = ", ".join(
            f"HWM {m['hwm'] / 1024:.1f} anon {m['anon'] / 1024:.1f} file {m['file'] / 1024:.1f}"
            f" MB, {m['threads']} threads"
            for m in o.idle_memory
        )
        cpu = f"{o.cpu_s / o.jobs * 1000:.2f} ms CPU/job" if o.cpu_s and o.jobs else "n/a"
        scraped = f", {o.scrapes} scrapes" if o.contender.metrics else ""
        print(
            f"   {o.summary()}: {rate} jobs/s (worker log), {cpu}, idle RSS {rss} MB"
            f" ({mem}){scraped}"
        )
    parts = []
    for name, value, unit in (
        ("rate", lambda o: o.log_rate, "jobs/s"),
        ("CPU", lambda o: o.cpu_s / o.jobs * 1000 if o.cpu_s and o.jobs else None, "ms/job"),
    ):
        off_s, off = spread([value(o) for o in outcomes if not o.contender.metrics])
        on_s, on = spread([value(o) for o in outcomes if o.contender.metrics])
        if off and on:
            # The cost: a lower rate, a higher CPU time per job.
            cost = (off - on) / off * 100 if name == "rate" else (on - off) / off * 100
            parts.append(
                f"{name} off {off_s}, on {on_s} {unit} (median (min..max) of "
                f"{sum(not o.contender.metrics for o in outcomes)}): cost {cost:+.1f} % (goal < 2 %)"
            )
    if any(o.contender.variant for o in outcomes):
        return report_variants(outcomes)
    rss_on = [kb for o in outcomes if o.contender.metrics for kb in o.idle_rss_kb]
    rss_off = [kb for o in outcomes if not o.contender.metrics for kb in o.idle_rss_kb]
    if rss_on:
        parts.append(
            f"idle RSS with metrics on {max(rss_on) / 1024:.1f} MB (goal < 40 MB)"
            + (f", off {max(rss_off) / 1024:.1f} MB" if rss_off else "")
        )
    print("metrics: " + " | ".join(parts or ["no figures"]), flush=True)


def report_variants(outcomes):
    """Scenario metrics with --variant: each variant's idle memory (medians (min..max) over
    its rounds, MB)."""
    names = list(dict.fromkeys(o.contender.variant for o in outcomes))
    for name in names:
        mine = [o for o in outcomes if o.contender.variant == name]
        figures = []
        for label, get in (
            ("VmRSS", lambda o: [kb for kb in o.idle_rss_kb]),
            ("anon", lambda o: [m["anon"] for m in o.idle_memory]),
            ("file", lambda o: [m["file"] for m in o.idle_memory]),
            ("VmHWM", lambda o: [m["hwm"] for m in o.idle_memory]),
        ):
            text, _ = spread([kb / 1024 for o in mine for kb in get(o)])
            figures.append(f"{label} {text}")
        threads = sorted({m["threads"] for o in mine for m in o.idle_memory})
        rates = spread([o.log_rate for o in mine])[0]
        print(
            f"variant {name}: idle " + ", ".join(figures)
            + f" MB; threads {threads}; rate {rates} jobs/s; {len(mine)} runs",
            flush=True,
        )


def done_of(line):
    """("th" or "guide", job id, epoch seconds) of a `done` line (taskhost's, as text or as
    JSON with --phases; guide_worker.py's), else None."""
    try:
        if line.startswith("{"):
            rec = json.loads(line)
            if rec.get("message") != TASKHOST_DONE:
                return None
            return "th", rec.get("job") or rec["job_id"], parse_stamp(rec["timestamp"])
        m = DONE_LINE.search(line)
        if not m:
            return None
        side = "th" if m.group("th") else "guide"
        return side, m.group("th") or m.group("guide"), stamp_of(line)
    except (ValueError, KeyError):
        return None


def report_phases(outcomes):
    """Where a taskhost job's time goes (--phases): per worker log, the medians and means over
    its jobs of the phases its debug lines delimit (ceiling.py's `phase_times`)."""
    for o in outcomes:
        if o.contender.kind != "taskhost":
            continue
        for log in sorted(o.log_dir.glob("w*.log")):
            print(f"{o.contender.label}, {log.name}: phases, ms median / mean over jobs:")
            for name, (med, mean, n) in phase_times(log).items():
                print(f"   {name:43} {med:7.3f} / {mean:7.3f}  ({n})")


def report(scenario, outcomes):
    if scenario == "metrics":
        return report_metrics(outcomes)
    for o in outcomes:
        print(detail(o, per_job=scenario.startswith("small")))
    guide = next((o for o in outcomes if o.contender.kind == "guide"), None)
    hosts = [o for o in outcomes if o.contender.kind == "taskhost"]
    parts = []
    for o in outcomes:
        text = o.summary()
        if scenario.startswith("small") and o.finished:
            per_job = sum(o.s3_requests.values()) / o.jobs
            text += f" = {o.jobs / o.wall:.1f} jobs/s, {per_job:.2f} S3 req/job"
        parts.append(text)
    if guide and hosts:
        # As in "taskhost is N times faster": the guide's time over taskhost's.
        if len(hosts) == 1:
            parts.append(f"ratio {ratio(guide, hosts[0])}")
        else:
            each = ", ".join(f"{ratio(guide, h)} ({h.contender.label})" for h in hosts)
            parts.append(f"ratio {each}")
    print(f"{scenario}: " + " | ".join(parts), flush=True)
    if guide and hosts:
        print("(ratio: guide time / taskhost time; < or >: bounded by an unfinished side)")


# ---------------------------------------------------------------------------------------------
# Main


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    guests = os.environ.get("GUEST_TARGET_DIR", "guest-tasks/target")
    ap.add_argument("--scenario", choices=["churn", "small", "metrics"], default="churn")
    ap.add_argument(
        "--rounds", type=int, default=3, help="runs with metrics off and on each (metrics: 3)"
    )
    ap.add_argument(
        "--taskhost",
        type=Path,
        default=REPO / target / "release/taskhost",
        help="the taskhost binary (default: ${CARGO_TARGET_DIR:-target}/release/taskhost)",
    )
    ap.add_argument(
        "--build", action="store_true", help="run `cargo build --release -p taskhost` first"
    )
    ap.add_argument(
        "--wasm",
        type=Path,
        default=REPO / guests / "wasm32-wasip2/release/step_counter.wasm",
        help="step_counter.wasm (default: in ${GUEST_TARGET_DIR:-guest-tasks/target}, "
        "built by tests/build-guests.sh)",
    )
    ap.add_argument("--seed", type=int, default=1, help="seeds the jobs and the kill schedule")
    ap.add_argument(
        "--ack-deadline", type=int, default=10, help="ACK_DEADLINE_SECONDS of both (10)"
    )
    ap.add_argument(
        "--time-limit", type=float, default=300, help="seconds per contender (300)"
    )
    ap.add_argument(
        "--restart-on",
        choices=["node", "new-node"],
        default="node",
        help="where a killed worker restarts: on its node, its disk kept (default), or on a "
        "new node, with an empty cache directory",
    )
    ap.add_argument("--jobs", type=int, help="number of jobs (churn 40, small 200, metrics 400)")
    ap.add_argument("--workers", type=int, help="worker processes (churn 3, small 1)")
    ap.add_argument(
        "--slots", type=int, help="scenario small: taskhost's WORKER_SLOTS (default: its default)"
    )
    ap.add_argument(
        "--only", choices=["taskhost", "guide"], help="run only one side (for debugging)"
    )
    ap.add_argument(
        "--phases",
        action="store_true",
        help="scenario small: taskhost logs its debug lines as JSON, and where a job's time "
        "goes is printed after the report (logging every line slows the run: its rate is "
        "not the plain one)",
    )
    ap.add_argument(
        "--guide-max-delivery-attempts",
        type=int,
        default=5,
        help="the guide's dead-letter policy (5); 0: none",
    )
    ap.add_argument(
        "--leftover-wait",
        type=float,
        help="seconds to pull the job subscription for leftovers after the workers stopped "
        "(default: the ack deadline + 3)",
    )
    ap.add_argument(
        "--keep-logs", action="store_true", help="keep the log directory even on success"
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="'NAME[@BINARY] [KEY=VALUE ...]'",
        help="scenario metrics: instead of off/on, run each variant (metrics and heartbeats "
        "on; its own worker binary and extra environment) once per round, in turn, and "
        "report each one's idle memory (repeatable)",
    )
    ap.add_argument(
        "--smaps",
        action="store_true",
        help="scenario metrics: print each idle worker's resident memory by mapping "
        "(/proc/PID/smaps) and keep the file in the log directory",
    )
    args = ap.parse_args()
    if args.phases and args.scenario != "small":
        ap.error("--phases is for --scenario small")
    args.taskhost = args.taskhost.resolve()
    args.wasm = args.wasm.resolve()
    return args


def contenders(args):
    if args.scenario == "churn":
        cs = [
            Contender("taskhost 1 slot", "taskhost", "th1", slots=1),
            Contender("taskhost 2 slots", "taskhost", "th2", slots=2),
            Contender("guide", "guide", "guide"),
        ]
    elif args.scenario == "metrics" and args.variant:
        cs = []
        for r in range(args.rounds):
            for i, spec in enumerate(args.variant):
                name, *pairs = spec.split()
                name, _, binary = name.partition("@")
                env = dict(pair.split("=", 1) for pair in pairs)
                cs.append(
                    Contender(
                        f"{name} #{r + 1}", "taskhost", f"v{i}r{r}", metrics=True,
                        variant=name, taskhost=Path(binary).resolve() if binary else None,
                        env=env,
                    )
                )
    elif args.scenario == "metrics":
        cs = []
        for r in range(args.rounds):
            cs.append(Contender(f"metrics off #{r + 1}", "taskhost", f"moff{r}"))
            cs.append(Contender(f"metrics on #{r + 1}", "taskhost", f"mon{r}", metrics=True))
    else:
        label = f"taskhost {args.slots} slots" if args.slots else "taskhost (default slots)"
        cs = [
            Contender(label, "taskhost", "thd", slots=args.slots),
            Contender("guide", "guide", "guide"),
        ]
    return [c for c in cs if args.only in (None, c.kind)]


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main():
    args = parse_args()
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        os.environ.pop(name, None)  # loopback only
    if args.build:
        print("cargo build --release -p taskhost", file=sys.stderr, flush=True)
        built = subprocess.run(["cargo", "build", "--release", "-p", "taskhost"], cwd=REPO)
        if built.returncode != 0:
            sys.exit(f"churn.py: cargo build failed ({built.returncode})")
    if not args.taskhost.is_file():
        sys.exit(f"churn.py: no taskhost binary at {args.taskhost} (build it, or give --build)")
    if not args.wasm.is_file():
        sys.exit(f"churn.py: no {args.wasm}: run tests/build-guests.sh first")

    # Every way of being stopped ends in the `finally` below, which kills the children. SIGINT
    # too, even when the shell that started this script ignores it (a background job).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    log_dir = Path(tempfile.mkdtemp(prefix="taskhost-bench-"))
    children = Children()
    keep = True
    try:
        bench = Bench(args, children, log_dir)
        bench.start_servers()
        jobs = make_jobs(args.scenario, args.seed, args.jobs)
        workers = args.workers or (3 if args.scenario == "churn" else 1)
        kill_loop = args.scenario == "churn"
        outcomes = [bench.run(c, jobs, workers, kill_loop) for c in contenders(args)]
        label = args.scenario
        if args.scenario == "churn":
            label += f" (restart on {'a new node' if args.restart_on == 'new-node' else 'the node'})"
        report(label, outcomes)
        if args.phases:
            report_phases(outcomes)
        ok = all(o.clean for o in outcomes)
        keep = args.keep_logs or not ok
        if not ok:
            print(f"not every contender finished cleanly; logs in {log_dir}", file=sys.stderr)
        return 0 if ok else 1
    except BenchError as e:
        print(f"churn.py: {e}\nlogs in {log_dir}", file=sys.stderr)
        return 2
    except (gexc.GoogleAPIError, BotoCoreError, ClientError) as e:
        print(f"churn.py: a Pub/Sub or S3 call of the benchmark failed: {e!r}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"churn.py: interrupted; logs in {log_dir}", file=sys.stderr)
        return 130
    finally:
        children.kill_all()
        if keep:
            print(f"logs: {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
