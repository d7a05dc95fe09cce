#!/usr/bin/env python3
"""S3 test server for taskhost: moto's S3 backend, one request at a time, with real auth.

    serve.py PORT                        # listens on 127.0.0.1:PORT until killed
    serve.py PORT --request-log FILE     # ... and appends one line per request to FILE

Run it with the venv's python (tests/s3/setup-venv.sh prints where the venv is). The test
helper host/tests/all/support/s3.rs starts one per test and waits for `GET /_taskhost/health`.

What it adds to moto's S3 app (moto 5.2.5, pinned in setup-venv.sh), and why:

* One request at a time. A global lock is held while moto handles a request, from the
  moment its body has been read until its response body has been produced (the response
  is sent after the lock is let go: a write the server has stored, and another client has
  read, may not have been answered yet, so a test must not infer from what the server
  holds that its client got the answer; freezing the server then leaves that client
  waiting). moto itself
  checks `If-None-Match: *` / `If-Match` on PutObject (412 PreconditionFailed, checked
  against 5.2.5's source and by host/tests/all/store_s3.rs), but without a lock: under the
  stock threaded moto_server two concurrent create-only writers can both pass the check
  and both "win". With the lock the check and the write are atomic, as on R2 and S3,
  which is what the fencing protocol relies on. The HTTP server itself stays threaded so
  that clients keep their keep-alive connections and never wait in the listen backlog.

* SigV4 signatures are verified. moto accepts any credentials by default; this server
  accepts only ACCESS_KEY_ID / SECRET_ACCESS_KEY below (or the environment variables
  S3_TEST_ACCESS_KEY_ID / S3_TEST_SECRET_ACCESS_KEY), answers 403 InvalidAccessKeyId or
  SignatureDoesNotMatch otherwise, and checks the body against `x-amz-content-sha256`
  (403 XAmzContentSHA256Mismatch), so the tests can check what a wrong secret does.

* A read-only key: READONLY_ACCESS_KEY_ID / READONLY_SECRET_ACCESS_KEY (or
  S3_TEST_READONLY_ACCESS_KEY_ID / S3_TEST_READONLY_SECRET_ACCESS_KEY) may GET and HEAD;
  any other request signed with it gets 403 AccessDenied, as an R2 token with read-only
  permissions does, so the tests can check what a key that cannot write does.

* Region "auto" (R2's only region) is presented to moto as us-east-1: moto models AWS
  regions and would demand `LocationConstraint=auto` on CreateBucket, which R2 does not
  need. The signature is checked before this rewrite, against what the client sent.

* Optional request log (`--request-log FILE`, used by tests/bench/churn.py to count S3
  requests per job): one tab-separated line per request, health checks excepted, written
  after its response is produced: `METHOD <tab> RAW-URI <tab> STATUS <tab> USER-AGENT`.
  Without the flag nothing is logged.

* A test-only switch for a sick server: a GET of a key with a path segment `ignore-range`
  (`/bucket/ignore-range/...`) has its `Range` header dropped (after the signature check),
  so moto answers with the whole object, as a server that ignores Range does. The tests of
  the client's refusal of an answer longer than asked use it (host/tests/all/store_s3.rs).

Nothing else is changed: every S3 behaviour the tests see is moto's.
"""

import hashlib
import hmac
import io
import logging
import os
import re
import sys
import threading
from urllib.parse import quote, unquote

ACCESS_KEY_ID = os.environ.get("S3_TEST_ACCESS_KEY_ID", "taskhost-test")
SECRET_ACCESS_KEY = os.environ.get("S3_TEST_SECRET_ACCESS_KEY", "taskhost-test-secret")
READONLY_ACCESS_KEY_ID = os.environ.get("S3_TEST_READONLY_ACCESS_KEY_ID", "taskhost-test-readonly")
READONLY_SECRET_ACCESS_KEY = os.environ.get(
    "S3_TEST_READONLY_SECRET_ACCESS_KEY", "taskhost-test-readonly-secret"
)
READ_METHODS = ("GET", "HEAD")
HEALTH_PATH = "/_taskhost/health"
# A GET of a key under such a segment is answered as if it had no Range header.
IGNORE_RANGE_SEGMENT = "/ignore-range/"

AUTH_RE = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<sig>[0-9a-f]+)"
)


def error_response(start_response, status, code, message):
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    ).encode()
    start_response(
        status,
        [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
    )
    return [body]


def header_value(environ, name):
    if name == "content-type":
        return environ.get("CONTENT_TYPE")
    if name == "content-length":
        return environ.get("CONTENT_LENGTH")
    return environ.get("HTTP_" + name.upper().replace("-", "_"))


def canonical_query(query):
    """SigV4 canonical query string: each name and value URI-encoded (RFC 3986), sorted."""
    pairs = []
    for part in query.split("&") if query else []:
        name, _, value = part.partition("=")
        enc = lambda s: quote(unquote(s.replace("+", " ")), safe="-_.~")  # noqa: E731
        pairs.append((enc(name), enc(value)))
    pairs.sort()
    return "&".join(f"{n}={v}" for n, v in pairs)


def check_signature(environ, body):
    """Returns None when the request is signed with one of our keys and that key may make
    it, else (status, code, message)."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    m = AUTH_RE.match(auth)
    if not m:
        return ("403 Forbidden", "AccessDenied", "Missing or unsupported Authorization")
    cred = m.group("cred").split("/")
    if len(cred) != 5:
        return ("403 Forbidden", "AuthorizationHeaderMalformed", "Bad credential scope")
    key_id, date, region, service, terminator = cred
    secrets = {ACCESS_KEY_ID: SECRET_ACCESS_KEY, READONLY_ACCESS_KEY_ID: READONLY_SECRET_ACCESS_KEY}
    if key_id not in secrets:
        return (
            "403 Forbidden",
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
        )
    payload_hash = header_value(environ, "x-amz-content-sha256") or ""
    if not (payload_hash.startswith("UNSIGNED-PAYLOAD") or payload_hash.startswith("STREAMING-")):
        if hashlib.sha256(body).hexdigest() != payload_hash:
            return (
                "400 Bad Request",
                "XAmzContentSHA256Mismatch",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            )
    amz_date = header_value(environ, "x-amz-date") or ""
    raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ["PATH_INFO"]
    path, _, query = raw_uri.partition("?")
    signed = m.group("signed").split(";")
    canonical_headers = ""
    for name in signed:
        value = header_value(environ, name) or ""
        canonical_headers += f"{name}:{' '.join(value.split())}\n"
    canonical_request = "\n".join(
        [
            environ["REQUEST_METHOD"],
            path,
            canonical_query(query),
            canonical_headers,
            ";".join(signed),
            payload_hash,
        ]
    )
    scope = f"{date}/{region}/{service}/{terminator}"
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = ("AWS4" + secrets[key_id]).encode()
    for part in (date, region, service, terminator):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, m.group("sig")):
        return (
            "403 Forbidden",
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        )
    if key_id == READONLY_ACCESS_KEY_ID and environ["REQUEST_METHOD"] not in READ_METHODS:
        return ("403 Forbidden", "AccessDenied", "Access Denied")
    return None


class OneAtATime:
    """WSGI middleware: health check, auth, region mapping, the global request lock, and the
    optional request log."""

    def __init__(self, app, request_log=None):
        self.app = app
        self.lock = threading.Lock()
        # The optional request log (a line-buffered text file) and the lock of its writes.
        self.request_log = request_log
        self.log_lock = threading.Lock()

    def log_request(self, environ, status):
        if self.request_log is None:
            return
        uri = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
        fields = [
            environ.get("REQUEST_METHOD", ""),
            uri,
            status.split(" ", 1)[0],
            environ.get("HTTP_USER_AGENT", ""),
        ]
        line = "\t".join(f.replace("\t", " ").replace("\n", " ") for f in fields) + "\n"
        with self.log_lock:
            self.request_log.write(line)

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == HEALTH_PATH:
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
            return [b"ok"]
        if self.request_log is None:
            return self.handle(environ, start_response)

        def logged(status, headers, exc_info=None):
            self.log_request(environ, status)
            return start_response(status, headers, exc_info)

        return self.handle(environ, logged)

    def handle(self, environ, start_response):
        # Read the whole body outside the lock: a slow client must not hold up the others.
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)

        failure = check_signature(environ, body)
        if failure:
            return error_response(start_response, *failure)

        if environ.get("REQUEST_METHOD") == "GET" and IGNORE_RANGE_SEGMENT in environ.get("PATH_INFO", ""):
            environ.pop("HTTP_RANGE", None)

        auth = environ["HTTP_AUTHORIZATION"]
        environ["HTTP_AUTHORIZATION"] = auth.replace("/auto/s3/aws4_request", "/us-east-1/s3/aws4_request")

        with self.lock:
            captured = {}

            def capture(status, headers, exc_info=None):
                captured["status"], captured["headers"] = status, headers
                return lambda data: captured.setdefault("written", []).append(data)

            result = self.app(environ, capture)
            try:
                chunks = captured.get("written", []) + [bytes(c) for c in result]
            finally:
                if hasattr(result, "close"):
                    result.close()
        start_response(captured["status"], captured["headers"])
        return chunks


def main():
    args = sys.argv[1:]
    request_log = None
    if len(args) == 3 and args[1] == "--request-log":
        request_log = open(args[2], "a", buffering=1, encoding="utf-8")
        args = args[:1]
    if len(args) != 1:
        print("usage: serve.py PORT [--request-log FILE]", file=sys.stderr)
        sys.exit(2)
    port = int(args[0])

    from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = OneAtATime(create_backend_app("s3"), request_log)
    server = make_server(
        "127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler
    )
    print(f"taskhost S3 test server (moto) on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
