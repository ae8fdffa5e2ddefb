//! The CSI v1 protocol as Rust types, with tonic clients and servers, and the
//! kubelet's plugin registration API.
//!
//! Generated at build time from `csi.proto` (CSI spec v1.12.0) and
//! `pluginregistration.proto` (kubelet `pluginregistration/v1`). Other crates
//! use e.g. `everest_proto::csi::v1::identity_server::Identity` to implement a
//! service and `everest_proto::csi::v1::node_client::NodeClient` to call one.

/// The generated code, under the proto package path `csi.v1`.
pub mod csi {
    /// CSI spec v1 (`package csi.v1`).
    pub mod v1 {
        tonic::include_proto!("csi.v1");
    }
}

/// The kubelet's plugin registration API v1, under its proto package
/// `pluginregistration` (the package upstream gave it, so the kubelet's method
/// paths are `/pluginregistration.Registration/…`).
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");
}

/// The CSI spec release `csi.proto` follows; report it as the vendor-neutral
/// protocol version (e.g. in logs), not as the plugin's own version.
pub const CSI_SPEC_VERSION: &str = "1.12.0";

/// The compiled schema (`google.protobuf.FileDescriptorSet`, encoded) of
/// `csi.proto` and its imports, e.g. for a gRPC reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/csi_descriptor.bin"));

/// The compiled schema (encoded `FileDescriptorSet`) of `pluginregistration.proto`.
pub const REGISTRATION_FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(
    env!("OUT_DIR"),
    "/pluginregistration_descriptor.bin"
));

#[cfg(test)]
mod tests {
    //! Field numbers are the wire contract with every CSI client: these tests
    //! encode messages and read the tags back, so a renumbered field fails.

    use std::collections::BTreeMap;

    use prost::Message;

    use super::csi::v1::*;

    const VARINT: u8 = 0;
    const LEN: u8 = 2;

    fn read_varint(bytes: &[u8], pos: &mut usize) -> u64 {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = bytes[*pos];
            *pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return value;
            }
        }
        panic!("varint too long");
    }

    /// The top-level (field number, wire type) pairs of an encoded message.
    fn fields(msg: &impl Message) -> Vec<(u32, u8)> {
        let bytes = msg.encode_to_vec();
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < bytes.len() {
            let key = read_varint(&bytes, &mut pos);
            let (number, wire) = ((key >> 3) as u32, (key & 7) as u8);
            match wire {
                VARINT => {
                    read_varint(&bytes, &mut pos);
                }
                LEN => {
                    let len = read_varint(&bytes, &mut pos) as usize;
                    pos += len;
                }
                other => panic!("unexpected wire type {other}"),
            }
            out.push((number, wire));
        }
        out
    }

    fn map() -> std::collections::HashMap<String, String> {
        [("k".to_string(), "v".to_string())].into()
    }

    fn capability() -> VolumeCapability {
        VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(
                volume_capability::MountVolume {
                    fs_type: "ext4".into(),
                    ..Default::default()
                },
            )),
            access_mode: None,
        }
    }

    #[test]
    fn create_volume_request_numbers() {
        let req = CreateVolumeRequest {
            name: "pvc-1".into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 1,
                limit_bytes: 2,
            }),
            volume_capabilities: vec![capability()],
            parameters: map(),
            secrets: map(),
            volume_content_source: Some(VolumeContentSource {
                r#type: Some(volume_content_source::Type::Snapshot(
                    volume_content_source::SnapshotSource {
                        snapshot_id: "s".into(),
                    },
                )),
            }),
            accessibility_requirements: Some(TopologyRequirement::default()),
            mutable_parameters: map(),
        };
        assert_eq!(
            fields(&req),
            [1, 2, 3, 4, 5, 6, 7, 8].map(|n| (n, LEN)).to_vec()
        );
        // Only the name set: the first byte is the key of field 1, LEN.
        let name_only = CreateVolumeRequest {
            name: "x".into(),
            ..Default::default()
        };
        assert_eq!(name_only.encode_to_vec(), [0x0a, 1, b'x']);
    }

    #[test]
    fn volume_and_capability_numbers() {
        let volume = Volume {
            capacity_bytes: 5,
            volume_id: "id".into(),
            volume_context: map(),
            content_source: Some(VolumeContentSource::default()),
            accessible_topology: vec![Topology { segments: map() }],
        };
        assert_eq!(
            fields(&volume),
            [(1, VARINT), (2, LEN), (3, LEN), (4, LEN), (5, LEN)]
        );

        let block = VolumeCapability {
            access_type: Some(volume_capability::AccessType::Block(
                volume_capability::BlockVolume {},
            )),
            access_mode: Some(volume_capability::AccessMode {
                mode: volume_capability::access_mode::Mode::SingleNodeWriter.into(),
            }),
        };
        assert_eq!(fields(&block), [(1, LEN), (3, LEN)]);
        assert_eq!(fields(&capability()), [(2, LEN)]);
        let mount = volume_capability::MountVolume {
            fs_type: "xfs".into(),
            mount_flags: vec!["noatime".into()],
            volume_mount_group: "1000".into(),
        };
        assert_eq!(fields(&mount), [(1, LEN), (2, LEN), (3, LEN)]);
    }

    #[test]
    fn controller_publish_numbers() {
        let req = ControllerPublishVolumeRequest {
            volume_id: "v".into(),
            node_id: "n".into(),
            volume_capability: Some(capability()),
            readonly: true,
            secrets: map(),
            volume_context: map(),
        };
        assert_eq!(
            fields(&req),
            [
                (1, LEN),
                (2, LEN),
                (3, LEN),
                (4, VARINT),
                (5, LEN),
                (6, LEN)
            ]
        );
        let resp = ControllerPublishVolumeResponse {
            publish_context: map(),
        };
        assert_eq!(fields(&resp), [(1, LEN)]);
    }

    #[test]
    fn node_stage_and_publish_numbers() {
        let stage = NodeStageVolumeRequest {
            volume_id: "v".into(),
            publish_context: map(),
            staging_target_path: "/s".into(),
            volume_capability: Some(capability()),
            secrets: map(),
            volume_context: map(),
        };
        assert_eq!(fields(&stage), [1, 2, 3, 4, 5, 6].map(|n| (n, LEN)));
        let publish_context_only = NodeStageVolumeRequest {
            publish_context: map(),
            ..Default::default()
        };
        assert_eq!(publish_context_only.encode_to_vec()[0], 0x12);

        let publish = NodePublishVolumeRequest {
            volume_id: "v".into(),
            publish_context: map(),
            staging_target_path: "/s".into(),
            target_path: "/t".into(),
            volume_capability: Some(capability()),
            readonly: true,
            secrets: map(),
            volume_context: map(),
        };
        assert_eq!(
            fields(&publish),
            [
                (1, LEN),
                (2, LEN),
                (3, LEN),
                (4, LEN),
                (5, LEN),
                (6, VARINT),
                (7, LEN),
                (8, LEN)
            ]
        );
        let expand = NodeExpandVolumeRequest {
            volume_id: "v".into(),
            volume_path: "/p".into(),
            capacity_range: Some(CapacityRange::default()),
            staging_target_path: "/s".into(),
            volume_capability: Some(capability()),
            secrets: map(),
        };
        assert_eq!(fields(&expand), [1, 2, 3, 4, 5, 6].map(|n| (n, LEN)));
    }

    #[test]
    fn node_get_info_numbers() {
        let resp = NodeGetInfoResponse {
            node_id: "node-1".into(),
            max_volumes_per_node: 24,
            accessible_topology: Some(Topology { segments: map() }),
        };
        assert_eq!(fields(&resp), [(1, LEN), (2, VARINT), (3, LEN)]);
        let max_only = NodeGetInfoResponse {
            max_volumes_per_node: 24,
            ..Default::default()
        };
        assert_eq!(max_only.encode_to_vec(), [0x10, 24]);
    }

    #[test]
    fn identity_numbers() {
        let info = GetPluginInfoResponse {
            name: "a".into(),
            vendor_version: "b".into(),
            manifest: map(),
        };
        assert_eq!(fields(&info), [(1, LEN), (2, LEN), (3, LEN)]);
        let expansion = PluginCapability {
            r#type: Some(plugin_capability::Type::VolumeExpansion(
                plugin_capability::VolumeExpansion {
                    r#type: plugin_capability::volume_expansion::Type::Online.into(),
                },
            )),
        };
        assert_eq!(fields(&expansion), [(2, LEN)]);
        let probe = ProbeResponse { ready: Some(false) };
        // A set BoolValue wrapper is sent even when false.
        assert_eq!(probe.encode_to_vec(), [0x0a, 0]);
    }

    #[test]
    fn enum_values_match_spec() {
        use controller_service_capability::rpc::Type as C;
        use node_service_capability::rpc::Type as N;
        use plugin_capability::service::Type as S;
        use volume_capability::access_mode::Mode as M;

        assert_eq!(
            [
                M::SingleNodeWriter,
                M::SingleNodeReaderOnly,
                M::MultiNodeReaderOnly,
                M::MultiNodeSingleWriter,
                M::MultiNodeMultiWriter,
                M::SingleNodeSingleWriter,
                M::SingleNodeMultiWriter,
            ]
            .map(|m| m as i32),
            [1, 2, 3, 4, 5, 6, 7]
        );
        assert_eq!(
            [
                C::CreateDeleteVolume,
                C::PublishUnpublishVolume,
                C::ListVolumes,
                C::GetCapacity,
                C::CreateDeleteSnapshot,
                C::ListSnapshots,
                C::CloneVolume,
                C::PublishReadonly,
                C::ExpandVolume,
                C::ListVolumesPublishedNodes,
                C::VolumeCondition,
                C::GetVolume,
                C::SingleNodeMultiWriter,
                C::ModifyVolume,
                C::GetSnapshot,
            ]
            .map(|c| c as i32),
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
        );
        assert_eq!(
            [
                N::StageUnstageVolume,
                N::GetVolumeStats,
                N::ExpandVolume,
                N::VolumeCondition,
                N::SingleNodeMultiWriter,
                N::VolumeMountGroup,
            ]
            .map(|n| n as i32),
            [1, 2, 3, 4, 5, 6]
        );
        assert_eq!(
            [
                S::ControllerService,
                S::VolumeAccessibilityConstraints,
                S::GroupControllerService,
                S::SnapshotMetadataService,
            ]
            .map(|s| s as i32),
            [1, 2, 3, 4]
        );
        assert_eq!(volume_usage::Unit::Inodes as i32, 2);
        assert_eq!(BlockMetadataType::VariableLength as i32, 2);
    }

    #[test]
    fn descriptor_has_package_services_and_options() {
        let fds = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET)
            .expect("embedded descriptor decodes");
        let csi = fds
            .file
            .iter()
            .find(|f| f.name() == "csi.proto")
            .expect("csi.proto in descriptor set");
        assert_eq!(csi.package(), "csi.v1");
        assert_eq!(
            csi.options.as_ref().map(|o| o.go_package()),
            Some("github.com/container-storage-interface/spec/lib/go/csi")
        );
        let services: BTreeMap<&str, usize> = csi
            .service
            .iter()
            .map(|s| (s.name(), s.method.len()))
            .collect();
        assert_eq!(
            services,
            BTreeMap::from([
                ("Controller", 15),
                ("GroupController", 4),
                ("Identity", 3),
                ("Node", 8),
                ("SnapshotMetadata", 2),
            ])
        );
        let extensions: BTreeMap<&str, (i32, &str)> = csi
            .extension
            .iter()
            .map(|e| (e.name(), (e.number(), e.extendee())))
            .collect();
        assert_eq!(
            extensions["csi_secret"],
            (1059, ".google.protobuf.FieldOptions")
        );
        for name in [
            "alpha_enum",
            "alpha_enum_value",
            "alpha_field",
            "alpha_message",
            "alpha_method",
            "alpha_service",
        ] {
            assert_eq!(extensions[name].0, 1060, "{name}");
        }
    }

    #[test]
    fn group_and_snapshot_metadata_numbers() {
        let snap = Snapshot {
            size_bytes: 1,
            snapshot_id: "s".into(),
            source_volume_id: "v".into(),
            creation_time: Some(prost_types::Timestamp::default()),
            ready_to_use: true,
            group_snapshot_id: "g".into(),
        };
        assert_eq!(
            fields(&snap),
            [
                (1, VARINT),
                (2, LEN),
                (3, LEN),
                (4, LEN),
                (5, VARINT),
                (6, LEN)
            ]
        );
        let delta = GetMetadataDeltaRequest {
            base_snapshot_id: "a".into(),
            target_snapshot_id: "b".into(),
            starting_offset: 1,
            max_results: 2,
            secrets: map(),
        };
        assert_eq!(
            fields(&delta),
            [(1, LEN), (2, LEN), (3, VARINT), (4, VARINT), (5, LEN)]
        );
    }

    #[test]
    fn plugin_registration_numbers() {
        use super::pluginregistration::{PluginInfo, RegistrationStatus};
        let info = PluginInfo {
            r#type: "CSIPlugin".into(),
            name: "everest.csi.io".into(),
            endpoint: "/var/lib/kubelet/plugins/everest.csi.io/csi.sock".into(),
            supported_versions: vec!["1.0.0".into(), "1.1.0".into()],
        };
        assert_eq!(
            fields(&info),
            [(1, LEN), (2, LEN), (3, LEN), (4, LEN), (4, LEN)]
        );
        let status = RegistrationStatus {
            plugin_registered: true,
            error: "e".into(),
        };
        assert_eq!(fields(&status), [(1, VARINT), (2, LEN)]);
        // Only the error set: the first byte is the key of field 2, LEN.
        let error_only = RegistrationStatus {
            plugin_registered: false,
            error: "x".into(),
        };
        assert_eq!(error_only.encode_to_vec(), [0x12, 1, b'x']);
    }

    #[test]
    fn plugin_registration_package_and_methods() {
        let fds = prost_types::FileDescriptorSet::decode(super::REGISTRATION_FILE_DESCRIPTOR_SET)
            .expect("embedded descriptor decodes");
        let [file] = fds.file.as_slice() else {
            panic!("one file, no imports: {:?}", fds.file);
        };
        assert_eq!(file.package(), "pluginregistration");
        let [service] = file.service.as_slice() else {
            panic!("one service: {:?}", file.service);
        };
        assert_eq!(service.name(), "Registration");
        let methods: Vec<(&str, &str, &str)> = service
            .method
            .iter()
            .map(|m| (m.name(), m.input_type(), m.output_type()))
            .collect();
        assert_eq!(
            methods,
            [
                (
                    "GetInfo",
                    ".pluginregistration.InfoRequest",
                    ".pluginregistration.PluginInfo"
                ),
                (
                    "NotifyRegistrationStatus",
                    ".pluginregistration.RegistrationStatus",
                    ".pluginregistration.RegistrationStatusResponse"
                ),
            ]
        );
        let messages: BTreeMap<&str, usize> = file
            .message_type
            .iter()
            .map(|m| (m.name(), m.field.len()))
            .collect();
        assert_eq!(
            messages,
            BTreeMap::from([
                ("InfoRequest", 0),
                ("PluginInfo", 4),
                ("RegistrationStatus", 2),
                ("RegistrationStatusResponse", 0),
            ])
        );
    }
}
