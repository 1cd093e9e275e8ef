//! Compiles `proto/` with protox (pure Rust), so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(
        ["dashstream/v1/events.proto", "dashstream/v1/gateway.proto"],
        ["proto"],
    )?;
    prost_build::Config::new().bytes(["."]).compile_fds(files)?;
    Ok(())
}
