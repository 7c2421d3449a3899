"""An engine-style client of the Veltrix config sidecar, on the official grpcio package.

It reads the sidecar's address from VELTRIX_SIDECAR_ADDR (``unix:/run/veltrix/sidecar.sock``
or ``HOST:PORT``), waits until the sidecar is SERVING, reads one module and a batch, then
follows the module with Watch. When the stream breaks (the sidecar restarted), it opens
it again with backoff and resumes after the last revision it saw, so no change is missed.

Stubs are generated from proto/ at build time (see README.md), into a directory on
PYTHONPATH; they are not committed.

    python engine_client.py KEY [KEY...]

Prints one line per event, for people and for tests:
    get KEY REVISION JSON
    batch REVISION KEY[,KEY...]
    change KEY REVISION JSON
    reconnect REVISION
"""

import os
import random
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from veltrix.config.v1 import config_pb2, config_pb2_grpc


def wait_serving(channel, deadline_s):
    health = health_pb2_grpc.HealthStub(channel)
    end = time.monotonic() + deadline_s
    while True:
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        if time.monotonic() > end:
            raise SystemExit("the sidecar was not serving in time")
        time.sleep(0.05)


def main(keys):
    addr = os.environ.get("VELTRIX_SIDECAR_ADDR", "127.0.0.1:7070")
    # grpcio takes unix:PATH and HOST:PORT as they are. Over a unix socket it would send
    # the socket's path as the HTTP/2 :authority, which the sidecar's HTTP/2 server
    # refuses as malformed; any plain host name will do.
    options = [("grpc.default_authority", "localhost")] if addr.startswith("unix:") else []
    channel = grpc.insecure_channel(addr, options=options)
    wait_serving(channel, 10)
    config = config_pb2_grpc.ConfigServiceStub(channel)

    first = config.Get(config_pb2.GetRequest(key=keys[0]))
    print("get", first.entry.key, first.revision, first.entry.json.decode(), flush=True)
    batch = config.BatchGet(config_pb2.BatchGetRequest(keys=keys))
    print("batch", batch.revision, ",".join(entry.key for entry in batch.entries), flush=True)

    # A revision only means something in its history (epoch): pass both back.
    seen, epoch = batch.revision, batch.epoch
    delay = 0.05
    while True:
        request = config_pb2.WatchRequest(keys=keys, start_revision=seen, epoch=epoch)
        try:
            for message in config.Watch(request):
                delay = 0.05
                if message.kind in (config_pb2.WatchResponse.PROGRESS, config_pb2.WatchResponse.REJECTED):
                    continue
                seen, epoch = message.revision, message.epoch
                for entry in message.entries:
                    print("change", entry.key, message.revision, entry.json.decode(), flush=True)
        except grpc.RpcError as error:
            # The sidecar went away: come back with backoff and full jitter, and resume.
            time.sleep(random.uniform(0, delay))
            delay = min(delay * 2, 2.0)
            print("reconnect", seen, error.code().name, flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: engine_client.py KEY [KEY...]")
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:
        pass
