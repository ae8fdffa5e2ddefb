//! Generates the CSI types, clients and servers from `csi.proto`, and the kubelet's plugin
//! registration API from `pluginregistration.proto`, at build time.
//!
//! `protox` parses the protos in pure Rust, so no system `protoc` is needed.

use std::{env, error::Error, fs, path::PathBuf};

use prost::Message;

/// Each proto with the file its compiled schema is kept in.
const PROTOS: [(&str, &str); 2] = [
    ("csi.proto", "csi_descriptor.bin"),
    (
        "pluginregistration.proto",
        "pluginregistration_descriptor.bin",
    ),
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    for (proto, descriptor) in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
        let fds = protox::compile([proto], ["."])?;
        // Kept next to the generated code so tests (and a future gRPC reflection
        // service) can inspect the exact schema that was compiled.
        fs::write(out_dir.join(descriptor), fds.encode_to_vec())?;
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            .compile_fds(fds)?;
    }
    Ok(())
}
