"""Checks the broker's gRPC reflection with grpcio, a client other than tonic's own (issue 15, item 4).

Usage: python3 reflection.py HOST:PORT   (needs: pip install grpcio grpcio-reflection)

v1alpha goes through grpcio-reflection's own client, ProtoReflectionDescriptorDatabase, behind a
protobuf DescriptorPool, the way Python tools discover an API: it lists the services, resolves
broker.v1.Broker with its methods and messages, and expects an unknown symbol to raise KeyError, which it
does only for an error_response with NOT_FOUND (a stream ended by a status raises grpc.RpcError instead).

grpcio-reflection ships no v1 client, but v1's messages are v1alpha's under another package name, so the
v1 check sends v1alpha's message classes to the v1 method on one stream: an unknown symbol, then
ListServices and a symbol lookup on the same, still open, stream.

Prints each service it lists; exits non-zero with the reason on the first failed check.
"""

import queue
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

SERVICES = {
    "broker.v1.Broker",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}
# Seconds any one call may take: a hang fails the check instead of blocking the test.
TIMEOUT = 30


def check(condition, what):
    if not condition:
        sys.exit(f"FAILED: {what}")


def check_v1alpha(channel):
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    check(SERVICES <= services, f"v1alpha lists {sorted(services)}, missing {sorted(SERVICES - services)}")
    for name in sorted(services):
        print(f"v1alpha service: {name}")

    pool = descriptor_pool.DescriptorPool(database)
    broker = pool.FindServiceByName("broker.v1.Broker")
    create = broker.methods_by_name.get("CreateTenant")
    check(create is not None, "broker.v1.Broker has no CreateTenant method")
    check(
        create.input_type.full_name == "broker.v1.CreateTenantRequest",
        f"CreateTenant takes {create.input_type.full_name}",
    )
    quotas = pool.FindMessageTypeByName("broker.v1.Quotas")
    check(quotas.file.package == "broker.v1", f"broker.v1.Quotas is in package {quotas.file.package}")
    health = pool.FindServiceByName("grpc.health.v1.Health")
    check("Check" in health.methods_by_name, "grpc.health.v1.Health has no Check method")

    try:
        database.FindFileContainingSymbol("broker.v1.NoSuchThing")
    except KeyError:
        pass
    else:
        sys.exit("FAILED: v1alpha resolved broker.v1.NoSuchThing")


def check_v1(channel):
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    outgoing = queue.Queue()
    responses = call(iter(outgoing.get, None), timeout=TIMEOUT)

    def ask(**request):
        outgoing.put(reflection_pb2.ServerReflectionRequest(**request))
        return next(responses)

    unknown = ask(file_containing_symbol="broker.v1.NoSuchThing")
    check(unknown.WhichOneof("message_response") == "error_response", f"v1 unknown symbol: {unknown}")
    check(
        unknown.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0],
        f"v1 unknown symbol: code {unknown.error_response.error_code}",
    )

    listed = ask(list_services="")
    services = {s.name for s in listed.list_services_response.service}
    check(SERVICES <= services, f"v1 lists {sorted(services)} after an error_response")
    for name in sorted(services):
        print(f"v1 service: {name}")

    found = ask(file_containing_symbol="broker.v1.Broker")
    files = found.file_descriptor_response.file_descriptor_proto
    check(len(files) > 0, f"v1 broker.v1.Broker: {found}")
    file = descriptor_pb2.FileDescriptorProto.FromString(files[0])
    check(file.package == "broker.v1", f"v1 broker.v1.Broker is in package {file.package}")
    check(any(s.name == "Broker" for s in file.service), f"v1 {file.name} has no Broker service")

    outgoing.put(None)
    check(next(responses, None) is None, "v1 stream did not end after the client's side did")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with grpc.insecure_channel(sys.argv[1]) as channel:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        check_v1alpha(channel)
        check_v1(channel)
    print("reflection: OK")


if __name__ == "__main__":
    main()
