#!/usr/bin/env python3
"""S3 test server for taskhost: moto's S3 backend, one request at a time, with real auth.

    serve.py PORT                        # listens on 127.0.0.1:PORT until killed
    serve.py PORT --request-log FILE     # ... and appends one line per request to FILE

Run it with the venv's python (tests/s3/setup-venv.sh prints where the venv is). The test
helper host/tests/all/support/s3.rs starts one per test and waits for `GET /_taskhost/health`.

What it adds to moto's S3 app (moto 5.2.5, pinned in setup-venv.sh), and why:

* Its own small HTTP/1.1 front end (class Connection below), instead of werkzeug's dev
  server that moto_server uses: one thread per connection, keep-alive (a client's
  connection serves request after request, as R2's does), the whole request body read before
  the app is called, the response sent in one write with its Content-Length. werkzeug's dev
  server answers every request with `Connection: close` and then waits 10 ms for stray body
  bytes, so each request cost a new TCP connection and a new thread: about a third of this
  server's CPU (tests/bench/s3_server.py measures it). The WSGI environ moto gets is the
  one werkzeug and moto's MotoRequestHandler build (the same keys, the path unquoted the
  same way, S3 metadata headers with underscores kept for moto under their own spelling,
  other underscored headers dropped), so moto's Flask app behaves as under moto_server. An
  `Expect: 100-continue` is answered with `100 Continue`; a chunked request body is read to
  its end; an app that raises gets werkzeug's 500 page and the connection is closed.

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

* Another, for a server or proxy that answers with more than any client should read whole:
  a GET of a key with a path segment `huge-answer`, or a listing whose prefix starts with
  `huge-answer/`, is answered (after the signature check, without moto) with 32 MiB: the
  key's as a 400 error body, the listing's as a 200 page. The tests of the client's bound on
  the answers it reads whole use it (host/tests/all/store_s3.rs).

Nothing else is changed: every S3 behaviour the tests see is moto's.
"""

import hashlib
import hmac
import io
import os
import re
import socket
import socketserver
import sys
import threading
import time
import traceback
from email.utils import formatdate
from urllib.parse import parse_qs, quote, unquote, urlsplit

from moto.core.request import (
    PRESERVED_HEADER_NAMES_ENVIRON_KEY,
    environ_key_for_header,
    should_preserve_original_header_name,
)
from werkzeug.exceptions import InternalServerError

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
HUGE_ANSWER_SEGMENT = "/huge-answer/"
HUGE_ANSWER_BYTES = 32 << 20

# The front end's limits (those of Python's http.server) and its Server header.
MAX_LINE = 65536
MAX_HEADERS = 100
SERVER_VERSION = "taskhost-s3-test-server Python/" + sys.version.split()[0]

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


def huge_answer(environ):
    """The status of the `huge-answer` switch's answer to this request, or None."""
    if environ.get("REQUEST_METHOD") != "GET":
        return None
    if HUGE_ANSWER_SEGMENT in environ.get("PATH_INFO", ""):
        return "400 Bad Request"
    prefixes = parse_qs(environ.get("QUERY_STRING", "")).get("prefix", [])
    if any(p.startswith(HUGE_ANSWER_SEGMENT[1:]) for p in prefixes):
        return "200 OK"
    return None


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
        # The front end (Connection) read the whole body before the app, outside the lock (a
        # slow client must not hold up the others): `wsgi.input` is a BytesIO of it.
        body = environ["wsgi.input"].getvalue()

        failure = check_signature(environ, body)
        if failure:
            return error_response(start_response, *failure)

        if environ.get("REQUEST_METHOD") == "GET" and IGNORE_RANGE_SEGMENT in environ.get("PATH_INFO", ""):
            environ.pop("HTTP_RANGE", None)

        huge = huge_answer(environ)
        if huge:
            head = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>Huge</Code><Message>'
            start_response(huge, [("Content-Type", "application/xml"), ("Content-Length", str(HUGE_ANSWER_BYTES))])
            return [head + b"x" * (HUGE_ANSWER_BYTES - len(head))]

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


# ---------------------------------------------------------------------------------------------
# The HTTP/1.1 front end


class BadRequest(Exception):
    """A request this front end cannot parse: answered with STATUS, then the connection closes."""

    def __init__(self, status):
        super().__init__(status)
        self.status = status


class Connection(socketserver.BaseRequestHandler):
    """One client connection, in its own thread: requests are read and answered in turn
    until the client closes it or asks to (keep-alive, as HTTP/1.1 has by default).

    The WSGI environ is the one werkzeug's dev server with moto's MotoRequestHandler builds
    (same keys, the path unquoted as werkzeug does, headers with an underscore in their name
    dropped except S3 metadata ones, which keep their spelling for moto), except that the
    body is read whole before the app is called (`wsgi.input` is a BytesIO of it)."""

    def setup(self):
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.request.makefile("rb", buffering=65536)

    def finish(self):
        self.rfile.close()

    def handle(self):
        try:
            while self.handle_one():
                pass
        except BadRequest as e:
            headers = [("Content-Type", "text/plain")]
            try:
                self.send(e.status, headers, e.status.encode(), "GET", True)
            except OSError:
                pass
        except OSError:  # the client went away (reset, broken pipe, a short body)
            pass

    def readline(self):
        line = self.rfile.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise BadRequest("431 Request Header Fields Too Large")
        return line

    def handle_one(self):
        """Reads and answers one request; returns whether the connection stays open."""
        line = self.readline()
        while line in (b"\r\n", b"\n"):  # empty lines before a request line are allowed
            line = self.readline()
        if not line:
            return False
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise BadRequest("400 Bad Request")
        method, target, version = parts

        headers = []  # (name, value) as sent, in order
        while True:
            line = self.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            if len(headers) >= MAX_HEADERS:
                raise BadRequest("431 Request Header Fields Too Large")
            text = line.decode("latin-1").rstrip("\r\n")
            if not text:
                raise BadRequest("400 Bad Request")
            if text[0] in " \t" and headers:  # an obsolete folded continuation line
                headers[-1] = (headers[-1][0], headers[-1][1] + text)
                continue
            name, sep, value = text.partition(":")
            if not sep or not name or name != name.strip():
                raise BadRequest("400 Bad Request")
            headers.append((name, value.lstrip(" \t")))

        environ = self.make_environ(method, target, version, headers)
        connection = environ.get("HTTP_CONNECTION", "").lower()
        close = version == "HTTP/1.0" or "close" in connection

        # The body, read whole (outside the server's lock: the app is not called yet).
        te = environ.get("HTTP_TRANSFER_ENCODING", "")
        chunked = "chunked" in [t.strip().lower() for t in te.split(",")] if te else False
        length = environ.get("CONTENT_LENGTH")
        if chunked or length:
            if (
                environ.get("HTTP_EXPECT", "").lower().strip(" \t") == "100-continue"
                and version == "HTTP/1.1"
            ):
                self.request.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if chunked:
            body = self.read_chunked()
            environ["wsgi.input_terminated"] = True
        elif length:
            if not length.isdigit():
                raise BadRequest("400 Bad Request")
            body = self.rfile.read(int(length))
            if len(body) != int(length):
                return False  # the client went away mid-body
        else:
            body = b""
        environ["wsgi.input"] = io.BytesIO(body)

        status, response_headers, chunks, failed = self.call_app(environ)
        close = close or failed
        self.send(status, response_headers, b"".join(chunks), method, close)
        return not close

    def read_chunked(self):
        body = []
        while True:
            size_line = self.readline()
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadRequest("400 Bad Request") from None
            if size < 0:
                raise BadRequest("400 Bad Request")
            if size == 0:
                while self.readline() not in (b"\r\n", b"\n", b""):  # trailers, ignored
                    pass
                return b"".join(body)
            chunk = self.rfile.read(size)
            if len(chunk) != size or self.readline() not in (b"\r\n", b"\n"):
                raise OSError("short or badly terminated chunk")
            body.append(chunk)

    def make_environ(self, method, target, version, headers):
        url = urlsplit(target)
        # As werkzeug: a target starting with two slashes has its first segment parsed as a
        # host; it is part of the path.
        path_info = f"/{url.netloc}{url.path}" if not url.scheme and url.netloc else url.path
        server = self.server
        environ = {
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "SERVER_SOFTWARE": SERVER_VERSION,
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(path_info).encode().decode("latin-1"),
            "QUERY_STRING": url.query.encode().decode("latin-1"),
            "REQUEST_URI": target,
            "RAW_URI": target,
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_PORT": self.client_address[1],
            "SERVER_NAME": server.server_address[0],
            "SERVER_PORT": str(server.server_address[1]),
            "SERVER_PROTOCOL": version,
        }
        # As werkzeug's WSGIRequestHandler: no header with an underscore in its name (X_Foo
        # could spoof X-Foo), repeated headers joined with commas.
        for name, value in headers:
            if "_" in name:
                continue
            key = name.upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
                if key in environ:
                    value = f"{environ[key]},{value}"
            environ[key] = value
        if url.scheme and url.netloc:
            environ["HTTP_HOST"] = url.netloc
        # As moto's MotoRequestHandler: S3 metadata headers with underscores are kept, under
        # their own spelling, unless a dashed header has the same environ key.
        names = {}
        underscored = [(n, v) for n, v in headers if "_" in n]
        if underscored:
            dashed = {environ_key_for_header(n) for n, _ in headers if "_" not in n}
            values = {}
            for name, value in underscored:
                if not should_preserve_original_header_name(name):
                    continue
                key = environ_key_for_header(name)
                if key in dashed:
                    continue
                names.setdefault(key, name)
                values.setdefault(key, []).append(value)
            for key, key_values in values.items():
                environ[key] = ",".join(key_values)
        environ[PRESERVED_HEADER_NAMES_ENVIRON_KEY] = names
        return environ

    def call_app(self, environ):
        """Returns (status, headers, body chunks, whether the app raised). An app that raises
        is answered as werkzeug's server answers it: its traceback on stderr, werkzeug's 500
        page."""
        captured = {}

        def start_response(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return captured.setdefault("written", []).append

        def run(app):
            result = app(environ, start_response)
            try:
                chunks = captured.get("written", []) + [bytes(c) for c in result]
            finally:
                if hasattr(result, "close"):
                    result.close()
            return captured["status"], captured["headers"], chunks

        try:
            return (*run(self.server.app), False)
        except Exception:
            traceback.print_exc()
            captured.clear()
            return (*run(InternalServerError()), True)

    def send(self, status, headers, body, method, close):
        code = int(status.split(None, 1)[0])
        lines = [f"HTTP/1.1 {status}", f"Server: {SERVER_VERSION}", f"Date: {http_date()}"]
        has_length = False
        for name, value in headers:
            lines.append(f"{name}: {value}")
            has_length = has_length or name.lower() == "content-length"
        # No body after HEAD, 1xx, 204 and 304 (their Content-Length, if any, is the app's).
        if method == "HEAD" or code < 200 or code in (204, 304):
            body = b""
        elif not has_length:
            lines.append(f"Content-Length: {len(body)}")
        if close:
            lines.append("Connection: close")
        lines.append("\r\n")
        self.request.sendall("\r\n".join(lines).encode("latin-1") + body)


_date = (0, "")  # (second, the Date header's value then)


def http_date():
    """The Date header's value (RFC 7231), formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True))
    return _date[1]


class Server(socketserver.ThreadingTCPServer):
    """A thread per connection (the threads are daemons: killing the server ends them)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, port, app):
        self.app = app
        super().__init__(("127.0.0.1", port), Connection)


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

    from moto.moto_server.werkzeug_app import create_backend_app

    app = OneAtATime(create_backend_app("s3"), request_log)
    server = Server(port, app)
    print(f"taskhost S3 test server (moto) on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
