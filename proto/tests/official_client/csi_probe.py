"""A CSI client built from the official spec, pointed at one of our sockets.

    DIR/venv/bin/python csi_probe.py --stubs DIR/stubs \
        --socket /run/everest/csi.sock --service node

Calls Identity.GetPluginInfo, GetPluginCapabilities and Probe, then
NodeGetCapabilities + NodeGetInfo (--service node) or
ControllerGetCapabilities (--service controller). Prints every decoded answer
as JSON on stdout and exits 1 if a call fails, a required field is empty, or
an answer carries fields the official schema does not know (the sign of a
renumbered field).
"""

import argparse
import json
import sys


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", required=True, help="unix socket path of the plugin")
    parser.add_argument("--authority", default="",
                        help="force this :authority (default: what gRPC core sends for a unix socket)")
    parser.add_argument("--service", required=True,
                        choices=["identity", "node", "controller"])
    parser.add_argument("--stubs", required=True,
                        help="directory with csi_pb2.py / csi_pb2_grpc.py (from setup.sh)")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds per RPC (default 5)")
    parser.add_argument("--wait", type=float, default=10.0,
                        help="seconds to wait for the socket to accept (default 10)")
    return parser.parse_args()


def unknown_field_numbers(message):
    """Field numbers in `message` (recursively) that the schema does not know."""
    from google.protobuf import unknown_fields

    found = [f.field_number for f in unknown_fields.UnknownFieldSet(message)]
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            values = value.values() if field.message_type.fields_by_name["value"].message_type else []
        elif field.is_repeated:
            values = value
        else:
            values = [value]
        for v in values:
            found.extend(unknown_field_numbers(v))
    return found


class Probe:
    def __init__(self, args, csi_pb2, csi_pb2_grpc, grpc, json_format):
        self.args = args
        self.pb = csi_pb2
        self.grpc = grpc
        self.json_format = json_format
        # No options on purpose: gRPC core sends the percent-encoded socket path
        # as :authority (grpc-go sends "localhost"), and the daemons must accept
        # what any client sends. --authority forces one, for comparison runs.
        options = [("grpc.default_authority", args.authority)] if args.authority else []
        self.channel = grpc.insecure_channel(f"unix:{args.socket}", options=options)
        self.identity = csi_pb2_grpc.IdentityStub(self.channel)
        self.node = csi_pb2_grpc.NodeStub(self.channel)
        self.controller = csi_pb2_grpc.ControllerStub(self.channel)
        self.results = {}
        self.failures = []

    def call(self, name, method, request, required=()):
        try:
            response = method(request, timeout=self.args.timeout)
        except self.grpc.RpcError as err:
            self.failures.append(f"{name}: {err.code().name}: {err.details()}")
            return None
        self.results[name] = self.json_format.MessageToDict(
            response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        for field in required:
            if not getattr(response, field):
                self.failures.append(f"{name}: required field {field!r} is empty")
        unknown = unknown_field_numbers(response)
        if unknown:
            self.failures.append(
                f"{name}: answer has field numbers unknown to the official schema: {unknown}"
            )
        return response

    def check_capabilities(self, name, response, oneof="type"):
        if response is None:
            return
        for i, cap in enumerate(response.capabilities):
            if cap.WhichOneof(oneof) is None:
                self.failures.append(f"{name}: capabilities[{i}] has no {oneof} set")

    def run(self):
        try:
            self.grpc.channel_ready_future(self.channel).result(timeout=self.args.wait)
        except self.grpc.FutureTimeoutError:
            self.failures.append(f"socket {self.args.socket} not ready after {self.args.wait}s")
            return

        pb = self.pb
        self.call("GetPluginInfo", self.identity.GetPluginInfo, pb.GetPluginInfoRequest(),
                  required=("name", "vendor_version"))
        caps = self.call("GetPluginCapabilities", self.identity.GetPluginCapabilities,
                         pb.GetPluginCapabilitiesRequest())
        self.check_capabilities("GetPluginCapabilities", caps)
        self.call("Probe", self.identity.Probe, pb.ProbeRequest())

        if self.args.service == "node":
            caps = self.call("NodeGetCapabilities", self.node.NodeGetCapabilities,
                             pb.NodeGetCapabilitiesRequest())
            self.check_capabilities("NodeGetCapabilities", caps)
            self.call("NodeGetInfo", self.node.NodeGetInfo, pb.NodeGetInfoRequest(),
                      required=("node_id",))
        elif self.args.service == "controller":
            caps = self.call("ControllerGetCapabilities", self.controller.ControllerGetCapabilities,
                             pb.ControllerGetCapabilitiesRequest())
            self.check_capabilities("ControllerGetCapabilities", caps)
        self.channel.close()


def main():
    args = parse_args()
    sys.path.insert(0, args.stubs)
    import grpc
    from google.protobuf import json_format

    import csi_pb2
    import csi_pb2_grpc

    probe = Probe(args, csi_pb2, csi_pb2_grpc, grpc, json_format)
    probe.run()
    print(json.dumps({
        "socket": args.socket,
        "service": args.service,
        "client_schema": f"official CSI {csi_pb2.DESCRIPTOR.package} (v1.1.0 stubs)",
        "responses": probe.results,
        "failures": probe.failures,
    }, indent=2, sort_keys=True))
    if probe.failures:
        for failure in probe.failures:
            print(f"FAIL {failure}", file=sys.stderr)
        return 1
    print(f"OK: {len(probe.results)} calls answered", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
