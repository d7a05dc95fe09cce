#!/usr/bin/env python3
"""The guide's worker design, for the side-by-side benchmark (tests/bench/churn.py).

One job per process, as the original recipe does it: a unary Pull of ONE message, a
heartbeat thread that extends the lease (ModifyAckDeadline) every half deadline while the
job runs, the checkpoint `<job_id>/checkpoint.json` in the bucket after every step, the
result `<job_id>/result.txt` at the end, then the ack. No sandbox, no fencing: a second
worker that gets the same message simply runs it too.

The job is taskhost's step-counter task (guest-tasks/step-counter/src/lib.rs) computed the
same way: the message data is {"job_id": .., "steps": N, "step_ms": M}; step i (1..=N)
sleeps M ms and adds i to the sum, so the result is {"job_id", "steps": N,
"sum": N*(N+1)/2}. The default step_ms is the task's (0).

Environment (the guide's names): PROJECT_ID, SUBSCRIPTION_ID, ACK_DEADLINE_SECONDS
(default 60), R2_AWS_ACCESS_KEY_ID, R2_AWS_SECRET_ACCESS_KEY, R2_S3_ENDPOINT_URL,
R2_BUCKET_NAME, and PUBSUB_EMULATOR_HOST (read by the Pub/Sub client itself). Runs until
killed.
"""

import json
import os
import threading
import time
from datetime import datetime, timezone

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

PROJECT_ID = os.environ["PROJECT_ID"]
SUBSCRIPTION_ID = os.environ["SUBSCRIPTION_ID"]
ACK_DEADLINE = int(os.environ.get("ACK_DEADLINE_SECONDS", "60"))
BUCKET = os.environ["R2_BUCKET_NAME"]
DEFAULT_STEP_MS = 0  # step-counter's DEFAULT_STEP_MS
RPC_TIMEOUT = 30  # seconds, for every Pub/Sub call


def log(msg):
    # RFC 3339 UTC with microseconds, as taskhost's lines (churn.py reads the `done` lines' time).
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    print(f"{stamp} guide_worker[{os.getpid()}] {msg}", flush=True)


def heartbeat(subscriber, sub_path, ack_id, stop):
    """Extends the lease every half deadline until `stop` is set."""
    while not stop.wait(ACK_DEADLINE / 2):
        try:
            subscriber.modify_ack_deadline(
                request={"subscription": sub_path, "ack_ids": [ack_id],
                         "ack_deadline_seconds": ACK_DEADLINE},
                timeout=RPC_TIMEOUT,
            )
        except Exception as e:  # the next beat tries again
            log(f"heartbeat failed: {e}")


def load_checkpoint(s3, job_id):
    try:
        obj = s3.get_object(Bucket=BUCKET, Key=f"{job_id}/checkpoint.json")
    except ClientError as e:
        if e.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return {"step": 0, "sum": 0}
        raise
    return json.loads(obj["Body"].read())


def run_job(s3, job):
    job_id, steps = job["job_id"], int(job["steps"])
    step_ms = int(job.get("step_ms", DEFAULT_STEP_MS))
    state = load_checkpoint(s3, job_id)
    log(f"{job_id}: starting at step {state['step']} of {steps}")
    total = state["sum"]
    for i in range(state["step"], steps):
        time.sleep(step_ms / 1000)
        total += i + 1  # step i+1 adds i+1, as step-counter does
        s3.put_object(Bucket=BUCKET, Key=f"{job_id}/checkpoint.json",
                      Body=json.dumps({"step": i + 1, "sum": total}).encode())
    result = {"job_id": job_id, "steps": steps, "sum": total}
    s3.put_object(Bucket=BUCKET, Key=f"{job_id}/result.txt", Body=json.dumps(result).encode())
    log(f"{job_id}: done, sum {total}")


def main():
    subscriber = pubsub_v1.SubscriberClient()
    sub_path = subscriber.subscription_path(PROJECT_ID, SUBSCRIPTION_ID)
    s3 = boto3.client(
        "s3",
        endpoint_url=os.environ["R2_S3_ENDPOINT_URL"],
        aws_access_key_id=os.environ["R2_AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["R2_AWS_SECRET_ACCESS_KEY"],
        region_name="auto",
        # R2 (like this S3 test server) wants plain payloads: no aws-chunked checksums.
        config=Config(s3={"addressing_style": "path"},
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"),
    )
    log(f"pulling from {sub_path}")
    while True:
        try:
            response = subscriber.pull(
                request={"subscription": sub_path, "max_messages": 1}, timeout=RPC_TIMEOUT)
            received = list(response.received_messages)
        except (gexc.DeadlineExceeded, gexc.ServiceUnavailable) as e:
            log(f"pull: {e}")
            received = []
        if not received:
            time.sleep(1)
            continue
        message = received[0]
        stop = threading.Event()
        beat = threading.Thread(target=heartbeat, daemon=True,
                                args=(subscriber, sub_path, message.ack_id, stop))
        beat.start()
        try:
            run_job(s3, json.loads(message.message.data))
            subscriber.acknowledge(
                request={"subscription": sub_path, "ack_ids": [message.ack_id]},
                timeout=RPC_TIMEOUT)
        except Exception as e:  # no ack: the message comes back when the lease lapses
            log(f"job failed: {e!r}")
        finally:
            stop.set()
            beat.join()


if __name__ == "__main__":
    main()
