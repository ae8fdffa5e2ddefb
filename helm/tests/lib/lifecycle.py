#!/usr/bin/env python3
"""One volume through the calls the sidecars and kubelet make, over the daemons' sockets:
CreateVolume, ControllerPublish (block), NodeStage, NodePublish, a file written through the
mount, then back down and DeleteVolume.
Usage: lifecycle.py PROTO_DIR CONTROLLER_SOCK NODE_SOCK KUBELET_ROOT [block | object BACKEND]
(an object volume takes its keys from $OBS_AK and $OBS_SK: never from the command line)
An object volume stays staged until a line arrives on stdin (so its mounter can be killed)."""
import os, sys, tempfile, importlib
import grpc_tools
from grpc_tools import protoc
import grpc

proto_dir, csock, nsock, kubelet = sys.argv[1:5]
kind = sys.argv[5] if len(sys.argv) > 5 else "block"
out = tempfile.mkdtemp()
if protoc.main(["protoc", f"-I{proto_dir}", "-I" + os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"), f"--python_out={out}", f"--grpc_python_out={out}", "csi.proto"]) != 0:
    sys.exit("cannot compile csi.proto")
sys.path.insert(0, out)
pb = importlib.import_module("csi_pb2")
rpc = importlib.import_module("csi_pb2_grpc")
# The default authority of a unix channel is the socket path, which is not a valid HTTP/2 authority.
OPTS = [("grpc.default_authority", "localhost")]
ctrl = rpc.ControllerStub(grpc.insecure_channel(f"unix://{csock}", options=OPTS))
node = rpc.NodeStub(grpc.insecure_channel(f"unix://{nsock}", options=OPTS))
ident = rpc.IdentityStub(grpc.insecure_channel(f"unix://{csock}", options=OPTS))
M = pb.VolumeCapability.AccessMode
print("plugin:", ident.GetPluginInfo(pb.GetPluginInfoRequest()).name)
info = node.NodeGetInfo(pb.NodeGetInfoRequest())
if kind == "object":
    backend, ak, sk = sys.argv[6], os.environ["OBS_AK"], os.environ["OBS_SK"]
    cap = pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(), access_mode=M(mode=M.MULTI_NODE_MULTI_WRITER))
    req = pb.CreateVolumeRequest(name="pvc-metrics-live-" + os.urandom(4).hex(), capacity_range=pb.CapacityRange(required_bytes=1 << 30),
                                 volume_capabilities=[cap], parameters={"everest.io/backend": backend})
    secrets = {"access.key": ak, "secret.key": sk}
else:
    cap = pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(fs_type="ext4"), access_mode=M(mode=M.SINGLE_NODE_WRITER))
    req = pb.CreateVolumeRequest(
        name="pvc-metrics-live-" + os.urandom(4).hex(), capacity_range=pb.CapacityRange(required_bytes=10 << 30),
        volume_capabilities=[cap], parameters={"everest.io/backend": "evs-default"},
        # csi-provisioner with Topology=true passes the selected node's topology.
        accessibility_requirements=pb.TopologyRequirement(requisite=[info.accessible_topology], preferred=[info.accessible_topology]))
    secrets = {}
vol = ctrl.CreateVolume(req).volume
print("created", vol.volume_id)
try:
    publish_context = {}
    if kind != "object":
        publish_context = ctrl.ControllerPublishVolume(pb.ControllerPublishVolumeRequest(
            volume_id=vol.volume_id, node_id=info.node_id, volume_capability=cap, volume_context=vol.volume_context)).publish_context
    staging = os.path.join(kubelet, "plugins/kubernetes.io/csi", "everest.csi.io", "metrics-live-" + kind, "globalmount")
    target = os.path.join(kubelet, "pods/metrics-live/volumes/kubernetes.io~csi/pvc-" + kind + "/mount")
    os.makedirs(staging, exist_ok=True)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        node.NodeStageVolume(pb.NodeStageVolumeRequest(volume_id=vol.volume_id, publish_context=publish_context,
                             staging_target_path=staging, volume_capability=cap, volume_context=vol.volume_context,
                             secrets=secrets))
        node.NodePublishVolume(pb.NodePublishVolumeRequest(volume_id=vol.volume_id, publish_context=publish_context,
                               staging_target_path=staging, target_path=target, volume_capability=cap, volume_context=vol.volume_context))
        with open(os.path.join(target, "written-by-lifecycle"), "w") as f:
            f.write("metrics-live")
        print("mounted at", target, "and written", flush=True)
        if kind == "object":
            print("STAGED", staging, flush=True)
            sys.stdin.readline()
    finally:
        node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=target))
        node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=staging))
        if kind != "object":
            ctrl.ControllerUnpublishVolume(pb.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id, node_id=info.node_id))
finally:
    ctrl.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id))
    print("deleted", vol.volume_id)
