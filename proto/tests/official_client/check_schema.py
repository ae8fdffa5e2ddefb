"""Checks our csi.proto against the official CSI schema, element by element.

Every package, message, field (name, number, type, label, message type,
oneof), enum value, service and method of the official schema must exist
unchanged in ours; ours may add what later spec releases added.

    DIR/venv/bin/python check_schema.py --official DIR/official/csi-v1.1.0.fds \
        --ours proto/csi.proto
"""

import argparse
import os
import sys
import tempfile

import grpc_tools
from google.protobuf import descriptor_pb2
from grpc_tools import protoc


def load_official(path: str) -> descriptor_pb2.FileDescriptorProto:
    fds = descriptor_pb2.FileDescriptorSet.FromString(open(path, "rb").read())
    return next(f for f in fds.file if f.name == "csi.proto")


def compile_ours(proto: str) -> descriptor_pb2.FileDescriptorProto:
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ours.fds")
        rc = protoc.main(
            [
                "protoc",
                f"-I{os.path.dirname(os.path.abspath(proto))}",
                f"-I{include}",
                f"--descriptor_set_out={out}",
                os.path.basename(proto),
            ]
        )
        if rc != 0:
            raise SystemExit(f"protoc failed on {proto}")
        fds = descriptor_pb2.FileDescriptorSet.FromString(open(out, "rb").read())
    return fds.file[0]


def field_sig(msg, f):
    oneof = msg.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else None
    return (f.number, f.type, f.label, f.type_name, oneof)


def compare_enum(path, official, ours, errors):
    mine = {v.name: v.number for v in ours.value}
    for v in official.value:
        if mine.get(v.name) != v.number:
            errors.append(f"enum {path}.{v.name}: official {v.number}, ours {mine.get(v.name)}")


def compare_message(path, official, ours, errors, counts):
    mine = {f.name: f for f in ours.field}
    for f in official.field:
        counts["fields"] += 1
        m = mine.get(f.name)
        if m is None:
            errors.append(f"field {path}.{f.name} missing")
        elif field_sig(official, f) != field_sig(ours, m):
            errors.append(
                f"field {path}.{f.name}: official {field_sig(official, f)}, "
                f"ours {field_sig(ours, m)}"
            )
    if official.options.map_entry != ours.options.map_entry:
        errors.append(f"message {path}: map_entry differs")
    compare_types(path, official.nested_type, ours.nested_type,
                  official.enum_type, ours.enum_type, errors, counts)


def compare_types(path, official_msgs, our_msgs, official_enums, our_enums,
                  errors, counts):
    mine = {m.name: m for m in our_msgs}
    for m in official_msgs:
        counts["messages"] += 1
        if m.name not in mine:
            errors.append(f"message {path}.{m.name} missing")
            continue
        compare_message(f"{path}.{m.name}", m, mine[m.name], errors, counts)
    enums = {e.name: e for e in our_enums}
    for e in official_enums:
        counts["enums"] += 1
        if e.name not in enums:
            errors.append(f"enum {path}.{e.name} missing")
            continue
        compare_enum(f"{path}.{e.name}", e, enums[e.name], errors)


def compare_services(official, ours, errors, counts):
    services = {s.name: s for s in ours.service}
    for s in official.service:
        if s.name not in services:
            errors.append(f"service {s.name} missing")
            continue
        methods = {m.name: m for m in services[s.name].method}
        for m in s.method:
            counts["methods"] += 1
            mine = methods.get(m.name)
            sig = (m.input_type, m.output_type, m.client_streaming, m.server_streaming)
            if mine is None:
                errors.append(f"rpc {s.name}.{m.name} missing")
            elif sig != (mine.input_type, mine.output_type,
                         mine.client_streaming, mine.server_streaming):
                errors.append(f"rpc {s.name}.{m.name} signature differs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--official", required=True, help="official FileDescriptorSet")
    parser.add_argument("--ours", required=True, help="path to our csi.proto")
    args = parser.parse_args()

    official = load_official(args.official)
    ours = compile_ours(args.ours)
    errors = []
    counts = {"messages": 0, "fields": 0, "enums": 0, "methods": 0}
    if official.package != ours.package:
        errors.append(f"package: official {official.package}, ours {ours.package}")
    compare_types(official.package, official.message_type, ours.message_type,
                  official.enum_type, ours.enum_type, errors, counts)
    compare_services(official, ours, errors, counts)
    official_ext = {(e.extendee, e.name): e.number for e in official.extension}
    ours_ext = {(e.extendee, e.name): e.number for e in ours.extension}
    for key, number in official_ext.items():
        counts["fields"] += 1
        if ours_ext.get(key) != number:
            errors.append(f"extension {key}: official {number}, ours {ours_ext.get(key)}")

    for e in errors:
        print(f"MISMATCH {e}", file=sys.stderr)
    summary = ", ".join(f"{n} {k}" for k, n in counts.items())
    if errors:
        print(f"schema check FAILED: {len(errors)} mismatches ({summary} compared)")
        return 1
    print(f"schema check passed: {summary} of the official schema match ours")
    return 0


if __name__ == "__main__":
    sys.exit(main())
