"""A real S3 server for the tests: moto's server mode on 127.0.0.1, reached over HTTP by s3fs.

``running_moto()`` starts ``moto.server.ThreadedMotoServer`` in this
process (a test module wraps it in a module-scoped fixture); ``new_bucket`` makes a bucket with a unique name on it (moto keeps
its buckets process-wide, so names must not collide between modules).
``start_moto_with_auth`` starts a second server in a subprocess that checks
credentials, for the tests of wrong credentials.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass

CREDENTIALS = {"key": "testing", "secret": "testing"}


@dataclass
class S3Server:
    endpoint: str
    key: str = CREDENTIALS["key"]
    secret: str = CREDENTIALS["secret"]

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name="us-east-1",
        )

    def new_bucket(self, prefix: str = "ff") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def s3fs_options(self, **extra) -> dict:
        return {"endpoint_url": self.endpoint, "key": self.key, "secret": self.secret, **extra}

    def storage_options(self, path: str) -> dict:
        """The ``storage_factory`` dict of an S3 storage at ``path`` (bucket/prefix) on this server."""
        return {"kind": "S3", "options": {"path": path, "s3fs": self.s3fs_options()}}


@contextlib.contextmanager
def running_moto():
    """A moto S3 server on 127.0.0.1 in this process, for a module fixture::

        @pytest.fixture(scope="module")
        def moto_s3():
            with running_moto() as server:
                yield server
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto_with_auth() -> tuple[subprocess.Popen, S3Server]:
    """A moto server (own process) that checks credentials; returns it and an IAM user's keys."""
    import boto3

    port = free_port()
    # The first three requests may go unauthenticated: they create the user, its policy and its key.
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the moto server with authentication did not start") from None
            time.sleep(0.1)
    iam = boto3.client(
        "iam", endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1"
    )
    iam.create_user(UserName="ff")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="ff", PolicyName="all", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="ff")["AccessKey"]
    return process, S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
