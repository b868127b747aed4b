"""A Python client of the broker's gRPC API: the walk an operator and a tenant take, one line per step.

Usage: python3 client.py --module APP.wasm [--addr HOST:PORT] [--token ADMIN_TOKEN] [--call EXPORT]

--addr defaults to $BROKER_ADDR, else 127.0.0.1:7878; --token to $BROKER_TOKEN (the admin token that
`broker serve` writes to <state dir>/admin.token). The stubs are generated from proto/broker.proto at
run time with grpcio-tools, so nothing generated is kept.

As the admin it creates a tenant (or reuses one of that name) and issues a tenant token; everything
else runs with the tenant's token, leaving `tenant` empty ("my tenant"): upload the module, start an
instance, call an export (with --call; it must take no arguments), create a region, grant the instance
read-only access, watch the region, write to it and wait for the watch event. It also checks that
reflection lists the API and health, and that health answers SERVING. At the end it takes down what it
made, except the tenant (the API cannot delete tenants). Exits non-zero, naming the step and the
reason, on the first failure.
"""

import argparse
import contextlib
import importlib
import os
import subprocess
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.normpath(os.path.join(HERE, "..", "..", "proto", "broker.proto"))
# Seconds any one call may take, so a hang fails the step instead of blocking forever.
TIMEOUT = 30
# The rights bits of a grant (proto/broker.proto, GrantRequest.rights).
READ = 1


def load_stubs(proto):
    """Compiles `proto` with grpcio-tools' protoc into a temporary directory and imports the result."""
    with tempfile.TemporaryDirectory() as out:
        include, name = os.path.split(os.path.abspath(proto))
        protoc = [sys.executable, "-m", "grpc_tools.protoc", f"-I{include}"]
        protoc += [f"--python_out={out}", f"--grpc_python_out={out}", name]
        done = subprocess.run(protoc, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"FAILED generate stubs: {' '.join(protoc)}\n{done.stderr}")
        # Once imported, the modules live in memory: the directory can go.
        sys.path.insert(0, out)
        try:
            stem = os.path.splitext(name)[0]
            return importlib.import_module(f"{stem}_pb2"), importlib.import_module(f"{stem}_pb2_grpc")
        finally:
            sys.path.remove(out)


class CheckFailed(Exception):
    """A reply that arrived but is not what the step expected."""


def check(condition, what):
    if not condition:
        raise CheckFailed(what)


class step:
    """One step: prints `ok <name>: <detail>` when its block succeeds; a gRPC error or failed check in it
    exits with `FAILED <name>: <reason>` (cleanups registered so far still run)."""

    def __init__(self, name):
        self.name, self.detail = name, ""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is None:
            print(f"ok {self.name}: {self.detail}", flush=True)
            return
        if isinstance(error, grpc.RpcError):
            reason = f"{error.code().name}: {error.details()}"
        elif isinstance(error, CheckFailed):
            reason = str(error)
        else:
            return  # a bug here, not a failed step: let the traceback show
        # Printed now, not as the exit message: a cleanup that fails too must not hide this failure.
        print(f"FAILED {self.name}: {reason}", file=sys.stderr, flush=True)
        sys.exit(1)


class Broker:
    """The Broker stub bound to one token: every call carries it, and a deadline."""

    def __init__(self, stubs, channel, token):
        self._stub = stubs.BrokerStub(channel)
        self._metadata = (("authorization", f"Bearer {token}"),)

    def __getattr__(self, rpc):
        method = getattr(self._stub, rpc)
        return lambda request: method(request, metadata=self._metadata, timeout=TIMEOUT)


def check_health_and_reflection(channel):
    # Neither service needs a token.
    with step("health") as s:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="broker.v1.Broker"), timeout=TIMEOUT)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        check(reply.status == health_pb2.HealthCheckResponse.SERVING, f"broker.v1.Broker is {status}")
        s.detail = f"broker.v1.Broker is {status}"
    with step("reflection") as s:
        # grpcio-reflection's client speaks v1alpha.
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        wanted = {"broker.v1.Broker", "grpc.health.v1.Health"}
        check(wanted <= services, f"missing {sorted(wanted - services)} from {sorted(services)}")
        s.detail = ", ".join(sorted(services))


def walk(pb, grpc_stubs, channel, args, cleanup):
    admin = Broker(grpc_stubs, channel, args.token)
    with step("create tenant") as s:
        try:
            admin.CreateTenant(pb.CreateTenantRequest(name=args.tenant))
            s.detail = args.tenant
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
            s.detail = f"{args.tenant} (already there, reused)"
        # Without `rotate`, tokens issued before stay valid.
        token = admin.IssueToken(pb.IssueTokenRequest(tenant=args.tenant, rotate=False)).token
        s.detail += ", tenant token issued"
    # From here on the tenant acts for itself: an empty `tenant` field means the token's own tenant.
    tenant = Broker(grpc_stubs, channel, token)

    with step("upload module") as s:
        module = tenant.UploadModule(pb.UploadModuleRequest(name=args.name, wasm=args.wasm))
        cleanup.callback(undo, "delete module", tenant.DeleteModule, pb.ModuleRef(name=args.name))
        s.detail = f"{module.name}, {module.size} bytes, exports {', '.join(module.exports)}"

    instance = f"{args.name}-1"
    with step("start instance") as s:
        started = tenant.StartInstance(pb.StartInstanceRequest(module=args.name, name=instance))
        # DeleteInstance, not StopInstance: a stopped instance stays (restartable) and keeps its module.
        cleanup.callback(undo, "delete instance", tenant.DeleteInstance, pb.InstanceRef(name=instance))
        state = pb.InstanceState.Name(started.state)
        check(started.state == pb.INSTANCE_STATE_RUNNING, f"{instance} is {state}")
        s.detail = f"{instance} is {state}"

    if args.call:
        with step("call") as s:
            reply = tenant.CallInstance(pb.CallInstanceRequest(instance=instance, export=args.call))
            # Each result is a `Value` with one of i32, i64, f32, f64 set.
            results = [getattr(v, v.WhichOneof("value")) for v in reply.results]
            s.detail = f"{args.call}() -> {results}"

    region = pb.RegionRef(name=args.name)
    with step("create region") as s:
        request = pb.CreateRegionRequest(name=args.name, size=4096, mode=pb.MODE_HANDLE)
        created = tenant.CreateRegion(request)
        cleanup.callback(undo, "destroy region", tenant.DestroyRegion, region)
        s.detail = f"{created.name}, {created.size} bytes, {pb.Mode.Name(created.mode)}"

    with step("grant") as s:
        # `instance` names an instance of the region's tenant; `tenant/name` would name another's.
        grant = tenant.Grant(pb.GrantRequest(region=region, instance=instance, rights=READ))
        revoke = pb.RevokeRequest(region=region, grant_id=grant.grant_id)
        cleanup.callback(undo, "revoke", tenant.Revoke, revoke)
        s.detail = f"{instance} may read {args.name} (grant {grant.grant_id})"

    with step("watch") as s:
        # The stream's deadline also bounds the wait for the event below.
        events = tenant.WatchRegion(region)
        cleanup.callback(events.cancel)
        # The daemon sends the stream's headers once the watch is registered: after this, no change
        # can slip past it. A refused watch ends the stream with its status instead.
        events.initial_metadata()
        if events.done():
            raise CheckFailed(f"{events.code().name}: {events.details()}")
        s.detail = f"watching {args.name}"

    with step("write") as s:
        data = b"hello from python"
        version = tenant.WriteRegion(pb.WriteRegionRequest(region=region, offset=16, data=data)).version
        read = tenant.ReadRegion(pb.ReadRegionRequest(region=region, offset=16, len=len(data)))
        check(read.data == data, f"read back {read.data!r}")
        s.detail = f"{len(data)} bytes at 16, version {version}"

    with step("watch event") as s:
        event = next(events, None)
        check(event is not None, "the watch stream ended without an event")
        got = (event.version, event.offset, event.len)
        check(got == (version, 16, len(data)), f"(version, offset, len) = {got}")
        where = f"{event.tenant}/{event.region}"
        s.detail = f"{where} version {event.version}, {event.len} bytes at {event.offset}"


def undo(name, rpc, request):
    with step(f"cleanup: {name}") as s:
        rpc(request)
        s.detail = "done"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--addr", default=os.environ.get("BROKER_ADDR", "127.0.0.1:7878"))
    parser.add_argument("--token", default=os.environ.get("BROKER_TOKEN"), help="the admin token")
    parser.add_argument("--module", required=True, help="a .wasm file to upload")
    parser.add_argument("--call", help="an export taking no arguments, called once")
    parser.add_argument("--tenant", default="python-example")
    parser.add_argument("--name", default="python-example", help="of the module, instance and region")
    parser.add_argument("--proto", default=PROTO)
    args = parser.parse_args()
    if not args.token:
        parser.error("no admin token: pass --token or set BROKER_TOKEN")
    # grpcio wants host:port, without the scheme the daemon's other clients use.
    args.addr = args.addr.removeprefix("http://")
    try:
        with open(args.module, "rb") as f:
            args.wasm = f.read()
    except OSError as error:
        parser.error(f"--module: {error}")

    with step("stubs") as s:
        pb, grpc_stubs = load_stubs(args.proto)
        s.detail = f"generated from {args.proto}"
    with grpc.insecure_channel(args.addr) as channel:
        with step("connect") as s:
            try:
                grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
            except grpc.FutureTimeoutError:
                raise CheckFailed(f"no daemon answered at {args.addr} within {TIMEOUT} s") from None
            s.detail = args.addr
        check_health_and_reflection(channel)
        # Cleanups run in reverse order when the walk ends, also when it fails half-way.
        with contextlib.ExitStack() as cleanup:
            walk(pb, grpc_stubs, channel, args, cleanup)
    print("all steps passed")


if __name__ == "__main__":
    main()
