"""A real S3 HTTP endpoint for tests: moto's server (``moto[server]``, a test extra), objects in memory.

Chosen over s3rver (npm): it installs with the Python test extra (no Node.js
toolchain in CI), and it implements the S3 REST API from botocore's own
service model, so pyarrow's S3 client (which pyiceberg writes through) talks
to it as to AWS. It runs as a subprocess, so the test process and the
workers under test reach it over HTTP like any other client.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.system import accepts, free_port

#: Credentials moto accepts (any); the workers read them from the environment like from AWS.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


class MotoS3:
    """``moto_server`` on a loopback port; :meth:`bucket` creates a bucket through boto3."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_path = log_dir / f"moto-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not accepts(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto_server did not accept connections in {timeout_s} s")
            time.sleep(0.1)

    def bucket(self, name: str) -> str:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, region_name=CREDENTIALS["AWS_REGION"],
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=name)
        return f"s3://{name}"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None


@contextmanager
def running_moto(log_dir: Path) -> Iterator[MotoS3]:
    """A started moto S3 server (its log under ``log_dir``), stopped after."""
    server = MotoS3(log_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def with_credentials(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) plus the S3 credentials."""
    return {**(env if env is not None else os.environ), **CREDENTIALS}
