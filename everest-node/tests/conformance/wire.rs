//! Hostile bytes at the sockets, below the generated clients: a request that does not parse
//! (invalid UTF-8 in a string, garbage) gets gRPC's own answer for that, INTERNAL with the
//! decoder's reason; one over the 4 MiB limit OUT_OF_RANGE (tonic's answer); a well-formed request with a
//! huge map an ordinary INVALID_ARGUMENT; a path with a NUL byte INVALID_ARGUMENT. Neither
//! daemon panics or stops answering.

use prost::Message;
use prost::bytes::{Buf, BufMut};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;

use super::*;

/// Sends and receives message bodies as they are, so a test can send what no client would.
#[derive(Debug, Default, Clone)]
struct Raw;
#[derive(Debug)]
struct RawEncoder;
#[derive(Debug)]
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut body = vec![0; buf.remaining()];
        buf.copy_to_slice(&mut body);
        Ok(Some(body))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

async fn raw_call(
    world: &World,
    d: Daemon,
    method: &str,
    body: Vec<u8>,
) -> Result<Vec<u8>, Status> {
    let channel = everest_testsupport::csi::connect_uds(&world.socket(d))
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path: PathAndQuery = method.parse().expect("a method path");
    grpc.unary(tonic::Request::new(body), path, Raw)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn hostile_bytes_get_a_clean_error_and_the_daemons_keep_serving() {
    let Some(world) = start().await else {
        return;
    };
    const CREATE: &str = "/csi.v1.Controller/CreateVolume";
    // Field 1 (name), length 2, bytes that are not UTF-8.
    let status = raw_call(
        &world,
        Daemon::Controller,
        CREATE,
        vec![0x0a, 0x02, 0xff, 0xfe],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(status.message().contains("UTF-8"), "{status:?}");
    let status = raw_call(&world, Daemon::Controller, CREATE, vec![0xff; 64])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let status = raw_call(
        &world,
        Daemon::Node,
        "/csi.v1.Node/NodeStageVolume",
        vec![0x0a; 33],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");

    // Over the 4 MiB message limit: tonic answers OUT_OF_RANGE (gRPC's table says
    // RESOURCE_EXHAUSTED; docs/csi-semantics.md notes the difference).
    let big = csi::CreateVolumeRequest {
        name: "x".repeat(5 << 20),
        ..Default::default()
    };
    let status = raw_call(&world, Daemon::Controller, CREATE, big.encode_to_vec())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");

    // A well-formed request with a huge map: refused like any unknown parameter.
    let mut huge = create_request("pvc-huge-map", GIB, ext4(), &[]);
    for i in 0..50_000 {
        huge.parameters
            .insert(format!("junk.example.com/p{i}"), "v".into());
    }
    let status = raw_call(&world, Daemon::Controller, CREATE, huge.encode_to_vec())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("junk.example.com/p"),
        "{status:?}"
    );

    // A path with a NUL byte.
    let publish = csi::NodePublishVolumeRequest {
        volume_id: some_volume_id(),
        staging_target_path: world.staging_path(&some_volume_id()),
        target_path: format!("{}/pods/a\0b/mount", world.kubelet_root().display()),
        volume_capability: Some(ext4()),
        ..Default::default()
    };
    let result = world.node().await.node_publish_volume(publish).await;
    expect_error(result, Code::InvalidArgument, &["target_path"]);

    // Both daemons still answer.
    for d in [Daemon::Controller, Daemon::Node] {
        let ready = world
            .identity(d)
            .await
            .probe(csi::ProbeRequest {})
            .await
            .expect("Probe after the hostile requests")
            .into_inner();
        assert_ne!(ready.ready, Some(false));
    }
    assert!(world.disks().await.is_empty());
    shut_down_clean(world).await;
}
