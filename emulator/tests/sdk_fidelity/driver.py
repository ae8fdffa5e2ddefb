#!/usr/bin/env python3
"""Drives everest-emulator with Huawei Cloud's official Python SDK and reports every deviation.

Each call the product's EVS client makes (backends/evs/src/api/), and each SFS Turbo call of the
file backend (create, show, list, expand, delete), is sent through the SDK's own
request classes and AK/SK signer, with the endpoint pointed at the emulator. A call passes when
 - the emulator accepts the SDK's signature,
 - the raw response body has, at every field the SDK's model declares, a value of the model's
   type (the SDK itself coerces silently: bool("false") is True), and
 - every field our client reads is present, non-null and declared by the model;
and an error passes when it surfaces as the SDK's exception with the expected status and
error_code, and a request_id equal to the X-Request-Id header.

A deviation is printed as `DEVIATION <call>: <field>: <problem>` followed by the body, and the
exit status is 1. `--rename OLD=NEW` renames a JSON key in every response before the SDK and
the checks see it: the automated proof that a renamed field fails the suite.

usage: EVEREST_FIDELITY_SK=SK driver.py --endpoint http://127.0.0.1:PORT --ak AK --project P
                 --server S --zone AZ [--rename OLD=NEW]
"""

import argparse
import datetime
import json
import os
import sys
import time
import uuid

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions import exceptions
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkcore.http.http_handler import HttpHandler
import huaweicloudsdkecs.v2 as ecs
import huaweicloudsdkevs.v2 as evs
import huaweicloudsdksfsturbo.v1 as sfs

BODY_EXCERPT = 3000
JOB_DEADLINE_S = 30


class Wire:
    """What the SDK last sent and received, with optional key renames applied to responses."""

    def __init__(self, renames):
        self.renames = renames
        self.signed_headers = []
        self.status = None
        self.headers = {}
        self.text = ""

    def on_request(self, **kwargs):
        auth = kwargs["request"].header_params.get("Authorization", "")
        part = [p for p in auth.split(", ") if p.startswith("SignedHeaders=")]
        self.signed_headers = part[0].split("=", 1)[1].split(";") if part else []

    def on_response(self, **kwargs):
        resp = kwargs["response"]
        if self.renames and resp.content:
            try:
                resp._content = json.dumps(rename(json.loads(resp.content), self.renames)).encode()
            except ValueError:
                pass
        self.status = resp.status_code
        self.headers = resp.headers  # case-insensitive
        self.text = resp.text

    def body(self):
        try:
            return json.loads(self.text)
        except ValueError:
            return self.text


def rename(value, renames):
    if isinstance(value, dict):
        return {renames.get(k, k): rename(v, renames) for k, v in value.items()}
    if isinstance(value, list):
        return [rename(v, renames) for v in value]
    return value


class Suite:
    def __init__(self, wire):
        self.wire = wire
        self.deviations = 0
        self.calls = 0

    def deviation(self, call, field, problem):
        self.deviations += 1
        body = self.wire.text
        if len(body) > BODY_EXCERPT:
            body = body[:BODY_EXCERPT] + "..."
        print(f"DEVIATION {call}: {field}: {problem}\n    HTTP {self.wire.status} body: {body}")

    # --- types -------------------------------------------------------------------------------

    def check_type(self, call, package, typ, value, path):
        """Checks `value` against the SDK type name `typ`; recurses into lists, maps, models."""
        if value is None:
            return
        if typ.startswith("list["):
            if not isinstance(value, list):
                return self.deviation(call, path, f"is {type(value).__name__}, model says {typ}")
            for i, item in enumerate(value):
                self.check_type(call, package, typ[5:-1], item, f"{path}[{i}]")
        elif typ.startswith("dict("):
            if not isinstance(value, dict):
                return self.deviation(call, path, f"is {type(value).__name__}, model says {typ}")
            inner = typ[5:-1].split(", ", 1)[1]
            for k, item in value.items():
                self.check_type(call, package, inner, item, f"{path}.{k}")
        elif typ == "str":
            if not isinstance(value, str):
                self.deviation(call, path, f"is {json.dumps(value)}, model says str")
        elif typ == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                self.deviation(call, path, f"is {json.dumps(value)}, model says int")
        elif typ == "bool":
            if not isinstance(value, bool):
                self.deviation(call, path, f"is {json.dumps(value)}, model says bool")
        elif typ == "float":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                self.deviation(call, path, f"is {json.dumps(value)}, model says float")
        elif typ in ("datetime", "date"):
            # The SDK parses these strings (with dateutil when present, else keeps the string):
            # require an ISO 8601 form any parser takes.
            if not isinstance(value, str):
                return self.deviation(call, path, f"is {json.dumps(value)}, model says {typ}")
            try:
                datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                self.deviation(call, path, f"{value!r} does not parse as a {typ}")
        elif typ == "object":
            pass
        else:
            model = getattr(package, typ)
            if not isinstance(value, dict):
                return self.deviation(call, path, f"is {json.dumps(value)}, model says {typ}")
            for attr, attr_type in model.openapi_types.items():
                key = model.attribute_map[attr]
                if key in value:
                    self.check_type(call, package, attr_type, value[key], f"{path}.{key}")

    def field_type(self, package, typ, key):
        """The SDK type of `key` in model `typ`, or None when the model does not declare it."""
        model = getattr(package, typ)
        for attr, attr_type in model.openapi_types.items():
            if model.attribute_map[attr] == key:
                return attr_type
        return None

    def require(self, call, package, response_type, data, paths):
        """Each path (`a.b[].c`) must be declared by the model and present and non-null in the
        body; `[]` means every element of a list that must not be empty."""
        for path in paths:
            self.require_one(call, package, response_type, data, path.split("."), "", path)

    def require_one(self, call, package, typ, value, parts, at, path):
        if not parts:
            return
        part, rest = parts[0], parts[1:]
        each = part.endswith("[]")
        key = part[:-2] if each else part
        here = f"{at}.{key}" if at else key
        field_type = self.field_type(package, typ, key)
        if field_type is None:
            return self.deviation(call, here, f"our client reads it but the SDK's {typ} does not declare it")
        if not isinstance(value, dict) or value.get(key) is None:
            return self.deviation(call, here, "missing or null; our client reads it")
        inner = value[key]
        if each:
            if not isinstance(inner, list) or not inner:
                return self.deviation(call, here, "expected a non-empty list")
            for i, item in enumerate(inner):
                self.require_one(call, package, field_type[5:-1], item, rest, f"{here}[{i}]", path)
        elif rest:
            self.require_one(call, package, field_type, inner, rest, here, path)

    # --- calls -------------------------------------------------------------------------------

    def call(self, name, fn, request, package, response_type, reads=(), status=None):
        """Sends one request through the SDK; checks signature, types and the fields we read,
        and the HTTP status when one is given (a 202 with no body is checked as `{}`)."""
        self.calls += 1
        try:
            response = fn(request)
        except exceptions.SdkException as e:
            self.deviation(name, "(request)", f"the SDK raised {e}")
            return None
        data = self.wire.body()
        if data == "" and self.wire.status == 202:
            data = {}
        if self.wire.status >= 300 or not isinstance(data, dict):
            self.deviation(name, "(status)", f"HTTP {self.wire.status}")
            return None
        if status is not None and self.wire.status != status:
            self.deviation(name, "(status)", f"HTTP {self.wire.status}, expected {status}")
        if not self.wire.headers.get("X-Request-Id"):
            self.deviation(name, "X-Request-Id", "response header missing")
        before = self.deviations
        self.check_type(name, package, response_type, data, "")
        self.require(name, package, response_type, data, reads)
        if self.deviations == before:
            print(f"ok   {name}: HTTP {self.wire.status}, signed {';'.join(self.wire.signed_headers)}")
        return response, data

    def expect_error(self, name, fn, request, status, code, body_code=None):
        """The call must fail as the SDK's exception with this status, error_code and the
        X-Request-Id header as request_id; with `body_code`, the raw body must be SFS Turbo's
        `{"errCode": body_code, "errMsg": "..."}`."""
        self.calls += 1
        try:
            fn(request)
        except exceptions.ServiceResponseException as e:
            header_id = self.wire.headers.get("X-Request-Id")
            want_class = exceptions.ClientRequestException if status < 500 else exceptions.ServerResponseException
            if not isinstance(e, want_class):
                self.deviation(name, "(exception)", f"{type(e).__name__}, expected {want_class.__name__}")
            if e.status_code != status:
                self.deviation(name, "(status)", f"HTTP {e.status_code}, expected {status}")
            if str(e.error_code) != code:
                self.deviation(name, "error_code", f"{e.error_code!r}, expected {code!r}")
            if not header_id:
                self.deviation(name, "X-Request-Id", "response header missing")
            elif e.request_id != header_id:
                self.deviation(name, "request_id", f"{e.request_id!r} is not the X-Request-Id {header_id!r}")
            body = self.wire.body()
            if isinstance(body, dict) and "request_id" in body and body["request_id"] != header_id:
                self.deviation(name, "request_id", "the body's request_id differs from X-Request-Id")
            if body_code is not None:
                if not isinstance(body, dict) or body.get("errCode") != body_code:
                    self.deviation(name, "errCode", f"expected {body_code!r} in {self.wire.text}")
                elif not isinstance(body.get("errMsg"), str) or not body["errMsg"]:
                    self.deviation(name, "errMsg", "missing or empty")
            print(f"ok   {name}: {type(e).__name__} HTTP {e.status_code} {e.error_code} request_id {e.request_id}")
            return
        except exceptions.SdkException as e:
            self.deviation(name, "(exception)", f"{type(e).__name__}: {e}")
            return
        self.deviation(name, "(status)", f"succeeded with HTTP {self.wire.status}, expected {status} {code}")


def make_clients(args, wire, sk=None):
    config = HttpConfig.get_default_config()
    config.timeout = (5, 30)
    handler = HttpHandler().add_request_handler(wire.on_request).add_response_handler(wire.on_response)
    creds = BasicCredentials(args.ak, sk or args.sk, args.project)

    def build(cls):
        return (
            cls.new_builder()
            .with_http_config(config)
            .with_credentials(creds)
            .with_endpoints([args.endpoint])
            .with_http_handler(handler)
            .build()
        )

    return build(evs.EvsClient), build(ecs.EcsClient), build(sfs.SFSTurboClient)


# Fields our client reads (backends/evs/src/api/{evs,ecs,jobs}.rs), per response.
VOLUME_READS = ["id", "name", "status", "size", "volume_type", "availability_zone", "multiattach",
                "metadata", "tags", "wwn", "encrypted", "created_at"]
ATTACHMENT_READS = ["attachment_id", "volume_id", "server_id", "host_name", "device", "attached_at"]
EVS_JOB_READS = ["job_id", "job_type", "status", "entities"]
# backends/evs/src/api/snapshots.rs.
SNAPSHOT_READS = ["id", "name", "status", "size", "volume_id", "metadata", "created_at"]
ECS_SUB_JOB_READS = ["job_id", "job_type", "status", "entities.server_id"]
SERVER_READS = ["id", "name", "status", "OS-EXT-AZ:availability_zone"]
BLOCK_DEVICE_READS = ["id", "serverId", "volumeId", "device", "bus", "pciAddress", "size"]


def wait_job(suite, name, client, package, request_cls, job_id, reads):
    """Polls a job through the SDK until it ends; every poll's body is checked."""
    deadline = time.monotonic() + JOB_DEADLINE_S
    while True:
        got = suite.call(name, client.show_job, request_cls(job_id=job_id), package, "ShowJobResponse", reads)
        if got is None:
            return None
        status = got[1].get("status")
        if status in ("SUCCESS", "FAIL"):
            return got[1]
        if time.monotonic() > deadline:
            suite.deviation(name, "status", f"job {job_id} still {status} after {JOB_DEADLINE_S}s")
            return None
        time.sleep(0.05)


def run(args, suite, wire):
    evs_client, ecs_client, _ = make_clients(args, wire)
    vol_reads = [f"volume.{f}" for f in VOLUME_READS]

    # EVS create (with X-Client-Token, which the SDK signs), then its job.
    name = f"fidelity-{uuid.uuid4().hex[:8]}"
    option = evs.CreateVolumeOption(availability_zone=args.zone, volume_type="SSD", size=10,
                                    name=name, metadata={"everest.io/fidelity": "1"})
    request = evs.CreateVolumeRequest(x_client_token=str(uuid.uuid4()),
                                      body=evs.CreateVolumeRequestBody(volume=option))
    got = suite.call("evs.CreateVolume", evs_client.create_volume, request, evs, "CreateVolumeResponse",
                     ["job_id", "volume_ids"])
    if got is None:
        return suite
    for header in ("content-type", "x-client-token", "x-sdk-date", "host"):
        if header not in wire.signed_headers:
            suite.deviation("evs.CreateVolume", "SignedHeaders", f"the SDK did not sign {header}")
    volume_id = got[1]["volume_ids"][0]
    job = wait_job(suite, "evs.ShowJob(createVolume)", evs_client, evs, evs.ShowJobRequest, got[1]["job_id"],
                   EVS_JOB_READS + ["entities.volume_id", "entities.size"])
    if job is None:
        return suite
    if job["entities"].get("volume_id") != volume_id:
        suite.deviation("evs.ShowJob(createVolume)", "entities.volume_id", "does not name the new disk")

    # EVS get and list (every filter our client sends).
    suite.call("evs.ShowVolume", evs_client.show_volume, evs.ShowVolumeRequest(volume_id=volume_id), evs,
               "ShowVolumeResponse", vol_reads)
    list_reads = ["count"] + [f"volumes[].{f}" for f in VOLUME_READS]
    for label, request in [
        ("ids", evs.ListVolumesRequest(ids=f"['{volume_id}']")),
        ("id", evs.ListVolumesRequest(id=volume_id)),
        ("name+status+zone", evs.ListVolumesRequest(name=name, status="available", availability_zone=args.zone)),
        ("metadata", evs.ListVolumesRequest(metadata=json.dumps({"everest.io/fidelity": "1"}))),
    ]:
        got = suite.call(f"evs.ListVolumes({label})", evs_client.list_volumes, request, evs, "ListVolumesResponse",
                         list_reads)
        if got is not None and [v["id"] for v in got[1]["volumes"]] != [volume_id]:
            suite.deviation(f"evs.ListVolumes({label})", "volumes", f"expected exactly {volume_id}")
    # A second disk, so that paging has a next page.
    option2 = evs.CreateVolumeOption(availability_zone=args.zone, volume_type="SSD", size=10, name=name + "-b")
    got = suite.call("evs.CreateVolume(second)", evs_client.create_volume,
                     evs.CreateVolumeRequest(body=evs.CreateVolumeRequestBody(volume=option2)), evs,
                     "CreateVolumeResponse", ["job_id", "volume_ids"])
    second_id = got[1]["volume_ids"][0] if got else None
    if got:
        wait_job(suite, "evs.ShowJob(createVolume)", evs_client, evs, evs.ShowJobRequest, got[1]["job_id"],
                 EVS_JOB_READS)
    got = suite.call("evs.ListVolumes(limit=1)", evs_client.list_volumes, evs.ListVolumesRequest(limit=1), evs,
                     "ListVolumesResponse", list_reads + ["volumes_links[].href", "volumes_links[].rel"])
    if got is not None:
        suite.call("evs.ListVolumes(marker)", evs_client.list_volumes,
                   evs.ListVolumesRequest(limit=1, marker=got[1]["volumes"][0]["id"]), evs,
                   "ListVolumesResponse", list_reads)

    # ECS: the server, attach and its job, the views of attached disks.
    suite.call("ecs.NovaShowServer", ecs_client.nova_show_server, ecs.NovaShowServerRequest(server_id=args.server),
               ecs, "NovaShowServerResponse", [f"server.{f}" for f in SERVER_READS])
    body = ecs.AttachServerVolumeRequestBody(volume_attachment=ecs.AttachServerVolumeOption(volume_id=volume_id))
    got = suite.call("ecs.AttachServerVolume", ecs_client.attach_server_volume,
                     ecs.AttachServerVolumeRequest(server_id=args.server, body=body), ecs,
                     "AttachServerVolumeResponse", ["job_id"])
    if got is None:
        return suite
    ecs_job_reads = EVS_JOB_READS + [f"entities.sub_jobs[].{f}" for f in ECS_SUB_JOB_READS]
    job = wait_job(suite, "ecs.ShowJob(attachVolume)", ecs_client, ecs, ecs.ShowJobRequest, got[1]["job_id"],
                   ecs_job_reads)
    if job is not None and job.get("status") != "SUCCESS":
        suite.deviation("ecs.ShowJob(attachVolume)", "status", f"{job.get('status')}: the attach failed")
    suite.call("evs.ShowVolume(in-use)", evs_client.show_volume, evs.ShowVolumeRequest(volume_id=volume_id), evs,
               "ShowVolumeResponse", vol_reads + [f"volume.attachments[].{f}" for f in ATTACHMENT_READS])
    suite.call("evs.ListVolumes(server_id)", evs_client.list_volumes,
               evs.ListVolumesRequest(server_id=args.server), evs, "ListVolumesResponse",
               ["count"] + [f"volumes[].attachments[].{f}" for f in ATTACHMENT_READS])
    suite.call("ecs.NovaShowServer(attached)", ecs_client.nova_show_server,
               ecs.NovaShowServerRequest(server_id=args.server), ecs, "NovaShowServerResponse",
               [f"server.{f}" for f in SERVER_READS] + ["server.os-extended-volumes:volumes_attached[].id"])
    suite.call("ecs.ListServerBlockDevices", ecs_client.list_server_block_devices,
               ecs.ListServerBlockDevicesRequest(server_id=args.server), ecs, "ListServerBlockDevicesResponse",
               [f"volumeAttachments[].{f}" for f in BLOCK_DEVICE_READS]
               + [f"attachableQuantity.{f}" for f in ("free_scsi", "free_blk", "free_disk")])
    # Served for fidelity; our client does not call these yet.
    suite.call("ecs.ShowServer", ecs_client.show_server, ecs.ShowServerRequest(server_id=args.server), ecs,
               "ShowServerResponse", [f"server.{f}" for f in SERVER_READS])
    suite.call("ecs.ListServerVolumeAttachments", ecs_client.list_server_volume_attachments,
               ecs.ListServerVolumeAttachmentsRequest(server_id=args.server), ecs,
               "ListServerVolumeAttachmentsResponse",
               [f"volumeAttachments[].{f}" for f in ("id", "serverId", "volumeId", "device")])
    suite.call("ecs.ShowServerBlockDevice", ecs_client.show_server_block_device,
               ecs.ShowServerBlockDeviceRequest(server_id=args.server, volume_id=volume_id), ecs,
               "ShowServerBlockDeviceResponse", [f"volumeAttachment.{f}" for f in BLOCK_DEVICE_READS])

    # EVS extend while attached; the job reports the new size.
    resize = evs.ResizeVolumeRequestBody(os_extend=evs.OsExtend(new_size=12))
    got = suite.call("evs.ResizeVolume", evs_client.resize_volume,
                     evs.ResizeVolumeRequest(volume_id=volume_id, body=resize), evs, "ResizeVolumeResponse",
                     ["job_id"])
    if got is not None:
        job = wait_job(suite, "evs.ShowJob(extendVolume)", evs_client, evs, evs.ShowJobRequest, got[1]["job_id"],
                       EVS_JOB_READS + ["entities.size"])
        if job is not None and job["entities"].get("size") != 12:
            suite.deviation("evs.ShowJob(extendVolume)", "entities.size",
                            f"{job['entities'].get('size')}, expected the new size 12")

    # Errors, as the SDK surfaces them.
    suite.expect_error("evs.DeleteVolume(in-use)", evs_client.delete_volume,
                       evs.DeleteVolumeRequest(volume_id=volume_id), 400, "EVS.1046")
    suite.expect_error("evs.ResizeVolume(smaller)", evs_client.resize_volume,
                       evs.ResizeVolumeRequest(volume_id=volume_id, body=evs.ResizeVolumeRequestBody(
                           os_extend=evs.OsExtend(new_size=11))), 400, "EVS.1015")
    suite.expect_error("ecs.AttachServerVolume(attached)", ecs_client.attach_server_volume,
                       ecs.AttachServerVolumeRequest(server_id=args.server, body=body), 400, "Ecs.0057")
    bad_type = evs.CreateVolumeOption(availability_zone=args.zone, volume_type="NOPE", size=10, name=name)
    suite.expect_error("evs.CreateVolume(bad type)", evs_client.create_volume,
                       evs.CreateVolumeRequest(body=evs.CreateVolumeRequestBody(volume=bad_type)), 400, "EVS.1020")
    missing = str(uuid.uuid4())
    suite.expect_error("evs.ShowVolume(missing)", evs_client.show_volume, evs.ShowVolumeRequest(volume_id=missing),
                       404, "EVS.5404")
    suite.expect_error("evs.DeleteVolume(missing)", evs_client.delete_volume,
                       evs.DeleteVolumeRequest(volume_id=missing), 404, "EVS.5404")
    suite.expect_error("evs.ListVolumes(bad limit)", evs_client.list_volumes, evs.ListVolumesRequest(limit=0),
                       400, "EVS.2001")
    suite.expect_error("evs.ShowJob(missing)", evs_client.show_job, evs.ShowJobRequest(job_id=missing), 400,
                       "Common.0011")
    suite.expect_error("ecs.NovaShowServer(missing)", ecs_client.nova_show_server,
                       ecs.NovaShowServerRequest(server_id=missing), 404, "404")
    suite.expect_error("ecs.AttachServerVolume(no server)", ecs_client.attach_server_volume,
                       ecs.AttachServerVolumeRequest(server_id=missing, body=body), 404, "Ecs.0114")
    bad_evs, _, _ = make_clients(args, wire, sk="not-the-secret-key")
    suite.expect_error("evs.ShowVolume(bad signature)", bad_evs.show_volume,
                       evs.ShowVolumeRequest(volume_id=volume_id), 401, "APIGW.0301")

    # ECS detach and its job, then detach again (not attached).
    got = suite.call("ecs.DetachServerVolume", ecs_client.detach_server_volume,
                     ecs.DetachServerVolumeRequest(server_id=args.server, volume_id=volume_id, delete_flag="0"),
                     ecs, "DetachServerVolumeResponse", ["job_id"])
    if got is not None:
        wait_job(suite, "ecs.ShowJob(detachVolume)", ecs_client, ecs, ecs.ShowJobRequest, got[1]["job_id"],
                 ecs_job_reads)
    suite.expect_error("ecs.DetachServerVolume(not attached)", ecs_client.detach_server_volume,
                       ecs.DetachServerVolumeRequest(server_id=args.server, volume_id=volume_id, delete_flag="0"),
                       400, "Ecs.0111")

    # EVS snapshots of the first disk: create (202, `creating`), show until `available`, list by
    # disk and paged, a disk made from it, the refusals, delete (202, no body) until gone.
    third_id = None
    snap_ids = []
    snap_reads = [f"snapshot.{f}" for f in SNAPSHOT_READS]
    for label in ("", "-b"):
        opt = evs.CreateSnapshotOption(volume_id=volume_id, name=f"{name}-snap{label}", force=True,
                                       metadata={"everest.io/csi-name": name})
        got = suite.call("evs.CreateSnapshot", evs_client.create_snapshot,
                         evs.CreateSnapshotRequest(body=evs.CreateSnapshotRequestBody(snapshot=opt)), evs,
                         "CreateSnapshotResponse", snap_reads, status=202)
        if got is None:
            return suite
        if got[1]["snapshot"]["status"] != "creating":
            suite.deviation("evs.CreateSnapshot", "snapshot.status", "a new snapshot should be creating")
        snap_ids.append(got[1]["snapshot"]["id"])
    for sid in snap_ids:
        deadline = time.monotonic() + JOB_DEADLINE_S
        while True:
            got = suite.call("evs.ShowSnapshot", evs_client.show_snapshot, evs.ShowSnapshotRequest(snapshot_id=sid),
                             evs, "ShowSnapshotResponse", snap_reads)
            if got is None or got[1]["snapshot"]["status"] == "available":
                break
            if time.monotonic() > deadline:
                suite.deviation("evs.ShowSnapshot", "status", f"snapshot {sid} never became available")
                break
            time.sleep(0.05)
    list_snap_reads = ["count"] + [f"snapshots[].{f}" for f in SNAPSHOT_READS]
    got = suite.call("evs.ListSnapshots(volume_id)", evs_client.list_snapshots,
                     evs.ListSnapshotsRequest(volume_id=volume_id), evs, "ListSnapshotsResponse", list_snap_reads)
    if got is not None and sorted(x["id"] for x in got[1]["snapshots"]) != sorted(snap_ids):
        suite.deviation("evs.ListSnapshots(volume_id)", "snapshots", f"expected exactly {snap_ids}")
    got = suite.call("evs.ListSnapshots(limit=1)", evs_client.list_snapshots, evs.ListSnapshotsRequest(limit=1),
                     evs, "ListSnapshotsResponse", list_snap_reads + ["snapshots_links[].href", "snapshots_links[].rel"])
    # The SDK pages snapshots by offset (its ListSnapshotsRequest has no marker), as our client does.
    got2 = suite.call("evs.ListSnapshots(limit=1,offset=1)", evs_client.list_snapshots,
                      evs.ListSnapshotsRequest(limit=1, offset=1), evs, "ListSnapshotsResponse", list_snap_reads)
    if got is not None and got2 is not None and got[1]["snapshots"][0]["id"] == got2[1]["snapshots"][0]["id"]:
        suite.deviation("evs.ListSnapshots(limit=1,offset=1)", "snapshots", "offset 1 repeats the first page")
    option3 = evs.CreateVolumeOption(availability_zone=args.zone, volume_type="SSD", size=12, name=name + "-c",
                                     snapshot_id=snap_ids[0])
    got = suite.call("evs.CreateVolume(snapshot_id)", evs_client.create_volume,
                     evs.CreateVolumeRequest(body=evs.CreateVolumeRequestBody(volume=option3)), evs,
                     "CreateVolumeResponse", ["job_id", "volume_ids"])
    if got is not None:
        third_id = got[1]["volume_ids"][0]
        wait_job(suite, "evs.ShowJob(createVolume)", evs_client, evs, evs.ShowJobRequest, got[1]["job_id"],
                 EVS_JOB_READS)
        suite.call("evs.ShowVolume(from snapshot)", evs_client.show_volume,
                   evs.ShowVolumeRequest(volume_id=third_id), evs, "ShowVolumeResponse",
                   vol_reads + ["volume.snapshot_id"])
    suite.expect_error("evs.DeleteVolume(has snapshots)", evs_client.delete_volume,
                       evs.DeleteVolumeRequest(volume_id=volume_id), 400, "EVS.5400")
    suite.expect_error("evs.ShowSnapshot(missing)", evs_client.show_snapshot,
                       evs.ShowSnapshotRequest(snapshot_id=missing), 404, "EVS.5404")
    suite.expect_error("evs.DeleteSnapshot(missing)", evs_client.delete_snapshot,
                       evs.DeleteSnapshotRequest(snapshot_id=missing), 404, "EVS.5404")
    for sid in snap_ids:
        suite.call("evs.DeleteSnapshot", evs_client.delete_snapshot, evs.DeleteSnapshotRequest(snapshot_id=sid),
                   evs, "DeleteSnapshotResponse", status=202)
        deadline = time.monotonic() + JOB_DEADLINE_S
        while time.monotonic() < deadline:
            try:
                evs_client.show_snapshot(evs.ShowSnapshotRequest(snapshot_id=sid))
            except exceptions.ClientRequestException as e:
                if e.status_code == 404:
                    break
            time.sleep(0.05)
        else:
            suite.deviation("evs.DeleteSnapshot", "(effect)", f"snapshot {sid} still there")

    # Changing the second disk in place: type (with GPSSD2's figures), then IOPS and throughput.
    if second_id is not None:
        retype = evs.RetypeVolumeRequestBody(os_retype=evs.RetypeVolume(new_type="GPSSD2", iops=3000,
                                                                        throughput=125))
        got = suite.call("evs.RetypeVolume", evs_client.retype_volume,
                         evs.RetypeVolumeRequest(volume_id=second_id, body=retype), evs, "RetypeVolumeResponse",
                         ["job_id"], status=202)
        if got is not None:
            wait_job(suite, "evs.ShowJob(retypeVolume)", evs_client, evs, evs.ShowJobRequest, got[1]["job_id"],
                     EVS_JOB_READS)
        qos = evs.ModifyVolumeQoSRequestBody(qos_modify=evs.ModifyVolumeQoSOption(iops=6000, throughput=250))
        got = suite.call("evs.ModifyVolumeQoS", evs_client.modify_volume_qo_s,
                         evs.ModifyVolumeQoSRequest(volume_id=second_id, body=qos), evs, "ModifyVolumeQoSResponse",
                         ["job_id"], status=202)
        if got is not None:
            wait_job(suite, "evs.ShowJob(modifyVolumeQos)", evs_client, evs, evs.ShowJobRequest,
                     got[1]["job_id"], EVS_JOB_READS)
        got = suite.call("evs.ShowVolume(GPSSD2)", evs_client.show_volume,
                         evs.ShowVolumeRequest(volume_id=second_id), evs, "ShowVolumeResponse",
                         vol_reads + ["volume.iops.total_val", "volume.throughput.total_val"])
        if got is not None:
            v = got[1]["volume"]
            if (v["volume_type"], v["iops"]["total_val"], v["throughput"]["total_val"]) != ("GPSSD2", 6000, 250):
                suite.deviation("evs.ShowVolume(GPSSD2)", "volume", "the retype or QoS change did not land")
        back = evs.RetypeVolumeRequestBody(os_retype=evs.RetypeVolume(new_type="SAS"))
        suite.expect_error("evs.RetypeVolume(SSD-backed to SAS)", evs_client.retype_volume,
                           evs.RetypeVolumeRequest(volume_id=second_id, body=back), 400, "EVS.2087")

    # EVS delete and its job, for every disk.
    for vid in [volume_id, second_id, third_id]:
        if vid is None:
            continue
        got = suite.call("evs.DeleteVolume", evs_client.delete_volume, evs.DeleteVolumeRequest(volume_id=vid), evs,
                         "DeleteVolumeResponse", ["job_id"])
        if got is not None:
            wait_job(suite, "evs.ShowJob(deleteVolume)", evs_client, evs, evs.ShowJobRequest, got[1]["job_id"],
                     EVS_JOB_READS)
    return suite


# Fields the SFS Turbo client reads (issue 13: status, sub_status, size, export_location), per share.
SHARE_READS = ["id", "name", "status", "size", "export_location", "share_proto", "share_type",
               "availability_zone", "created_at"]
# SDK 3.1.219 reads error_code/errorCode/code, not SFS Turbo's errCode: it reports the HTTP status
# as the error_code of an SFS Turbo error, so the raw body's errCode is checked instead.


def wait_share(suite, name, client, share_id, done, reads):
    """Polls ShowShare through the SDK until `done(body)`; every poll's body is checked."""
    deadline = time.monotonic() + JOB_DEADLINE_S
    while True:
        got = suite.call(name, client.show_share, sfs.ShowShareRequest(share_id=share_id), sfs,
                         "ShowShareResponse", reads)
        if got is None:
            return None
        if done(got[1]):
            return got[1]
        if time.monotonic() > deadline:
            suite.deviation(name, "status", f"share {share_id} still {got[1].get('status')} after {JOB_DEADLINE_S}s")
            return None
        time.sleep(0.05)


def run_sfs(args, suite, wire):
    """SFS Turbo: create, show (polled), list, expand, the errors, delete."""
    _, _, client = make_clients(args, wire)
    name = f"fidelity-{uuid.uuid4().hex[:8]}"
    share = sfs.Share(name=name, share_proto="NFS", share_type="STANDARD", size=500,
                      availability_zone=args.zone, vpc_id="vpc-fidelity", subnet_id="subnet-fidelity",
                      security_group_id="sg-fidelity", metadata=sfs.Metadata(expand_type="bandwidth"))
    create = sfs.CreateShareRequest(body=sfs.CreateShareRequestBody(share=share))
    got = suite.call("sfsturbo.CreateShare", client.create_share, create, sfs, "CreateShareResponse",
                     ["id", "name", "status"], status=202)
    if got is None:
        return suite
    share_id = got[1]["id"]
    if got[1]["status"] != "100":
        suite.deviation("sfsturbo.CreateShare", "status", f"{got[1]['status']!r}, expected '100' (creating)")
    body = wait_share(suite, "sfsturbo.ShowShare", client, share_id, lambda b: b.get("status") != "100",
                      SHARE_READS)
    if body is None:
        return suite
    if body["status"] != "200":
        suite.deviation("sfsturbo.ShowShare", "status", f"{body['status']!r}, expected '200' (available)")
    if body.get("size") != "500.00":
        suite.deviation("sfsturbo.ShowShare", "size", f"{body.get('size')!r}, expected '500.00'")
    suite.call("sfsturbo.ListShares(limit=1,offset=0)", client.list_shares, sfs.ListSharesRequest(limit=1, offset=0),
               sfs, "ListSharesResponse", ["count"] + [f"shares[].{f}" for f in SHARE_READS])

    extend = sfs.ExpandShareRequestBody(extend=sfs.Extend(new_size=600))
    suite.call("sfsturbo.ExpandShare", client.expand_share, sfs.ExpandShareRequest(share_id=share_id, body=extend),
               sfs, "ExpandShareResponse", ["id", "name"], status=202)
    body = wait_share(suite, "sfsturbo.ShowShare(expanded)", client, share_id,
                      lambda b: b.get("sub_status") == "221", SHARE_READS + ["sub_status"])
    if body is not None and body.get("size") != "600.00":
        suite.deviation("sfsturbo.ShowShare(expanded)", "size", f"{body.get('size')!r}, expected '600.00'")

    small = sfs.ExpandShareRequestBody(extend=sfs.Extend(new_size=650))
    suite.expect_error("sfsturbo.ExpandShare(step under 100)", client.expand_share,
                       sfs.ExpandShareRequest(share_id=share_id, body=small), 400, "400", "SFS.TURBO.0008")
    suite.expect_error("sfsturbo.CreateShare(name taken)", client.create_share, create, 409, "409",
                       "SFS.TURBO.0009")
    suite.expect_error("sfsturbo.ListShares(limit=0)", client.list_shares, sfs.ListSharesRequest(limit=0), 400,
                       "400", "SFS.TURBO.0001")
    missing = str(uuid.uuid4())
    suite.expect_error("sfsturbo.ShowShare(missing)", client.show_share, sfs.ShowShareRequest(share_id=missing),
                       404, "404", "SFS.TURBO.0002")
    suite.expect_error("sfsturbo.DeleteShare(missing)", client.delete_share,
                       sfs.DeleteShareRequest(share_id=missing), 404, "404", "SFS.TURBO.0002")

    suite.call("sfsturbo.DeleteShare", client.delete_share, sfs.DeleteShareRequest(share_id=share_id), sfs,
               "DeleteShareResponse", status=202)
    deadline = time.monotonic() + JOB_DEADLINE_S
    while True:
        try:
            client.show_share(sfs.ShowShareRequest(share_id=share_id))
        except exceptions.ClientRequestException as e:
            if e.status_code == 404:
                break
            suite.deviation("sfsturbo.ShowShare(deleted)", "(status)", f"HTTP {e.status_code}, expected 404")
            break
        if time.monotonic() > deadline:
            suite.deviation("sfsturbo.ShowShare(deleted)", "status", f"share {share_id} not gone")
            break
        time.sleep(0.05)
    suite.expect_error("sfsturbo.ShowShare(deleted)", client.show_share, sfs.ShowShareRequest(share_id=share_id),
                       404, "404", "SFS.TURBO.0002")
    return suite


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag in ("endpoint", "ak", "project", "server", "zone"):
        parser.add_argument(f"--{flag}", required=True)
    parser.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                        help="rename a JSON key in every response (to show the suite catches it)")
    args = parser.parse_args()
    # The secret key comes from the environment, never the command line.
    args.sk = os.environ.get("EVEREST_FIDELITY_SK")
    if not args.sk:
        parser.error("EVEREST_FIDELITY_SK is not set")
    wire = Wire(dict(r.split("=", 1) for r in args.rename))
    suite = Suite(wire)
    run(args, suite, wire)
    run_sfs(args, suite, wire)
    print(f"{suite.calls} calls, {suite.deviations} deviations")
    sys.exit(1 if suite.deviations else 0)


if __name__ == "__main__":
    main()
