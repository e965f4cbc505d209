//! Generates the Protobuf types of `proto/nebula.proto` (prost) with the protoc that the
//! `protoc-bin-vendored` crate carries, so a build needs nothing but crates.io.
fn main() {
    println!("cargo:rerun-if-changed=proto/nebula.proto");
    let protoc =
        protoc_bin_vendored::protoc_bin_path().expect("a vendored protoc for this platform");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    config
        .compile_protos(&["proto/nebula.proto"], &["proto"])
        .expect("proto/nebula.proto compiles");
}
