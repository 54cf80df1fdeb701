//! Compiles the protos in `proto/` into Rust (prost + tonic) and into a descriptor set that the
//! REST transcoder, the OpenAPI generator and gRPC reflection read at run time.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = collect_protos("proto".as_ref())?;
    let well_known = protoc_bin_vendored::include_path()?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // File chunks pass through without a copy.
        .bytes(".")
        .file_descriptor_set_path(out_dir.join("keel_descriptor.bin"))
        .include_file("keel_protos.rs")
        .compile_protos(&protos, &[PathBuf::from("proto"), well_known])?;

    write_dependencies(&out_dir)?;

    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-changed=migrations");
    Ok(())
}

fn collect_protos(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(collect_protos(&path)?);
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Writes `dependencies.rs`: each direct dependency of Cargo.toml with the version Cargo.lock
/// resolved for it, for the dependency update check.
fn write_dependencies(out_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let manifest: toml::Table = std::fs::read_to_string("Cargo.toml")?.parse()?;
    let lock: toml::Table = std::fs::read_to_string("Cargo.lock")?.parse()?;
    let locked: Vec<(&str, semver::Version)> = lock
        .get("package")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|package| {
            let name = package.get("name")?.as_str()?;
            let version = semver::Version::parse(package.get("version")?.as_str()?).ok()?;
            Some((name, version))
        })
        .collect();
    let mut entries = Vec::new();
    let dependencies = manifest
        .get("dependencies")
        .and_then(toml::Value::as_table)
        .ok_or("Cargo.toml has no [dependencies]")?;
    for (key, declaration) in dependencies {
        let (name, requirement) = match declaration {
            toml::Value::String(requirement) => (key.as_str(), requirement.as_str()),
            toml::Value::Table(table) => (
                table
                    .get("package")
                    .and_then(toml::Value::as_str)
                    .unwrap_or(key),
                table
                    .get("version")
                    .and_then(toml::Value::as_str)
                    .unwrap_or("*"),
            ),
            _ => continue,
        };
        let requirement = semver::VersionReq::parse(requirement)?;
        let version = locked
            .iter()
            .filter(|(locked_name, version)| *locked_name == name && requirement.matches(version))
            .map(|(_, version)| version)
            .max()
            .ok_or_else(|| format!("{name} is not in Cargo.lock"))?;
        entries.push(format!("    ({name:?}, {:?}),", version.to_string()));
    }
    std::fs::write(
        out_dir.join("dependencies.rs"),
        format!(
            "/// Keel's direct dependencies and the versions it was built with.\n\
             pub const DEPENDENCIES: &[(&str, &str)] = &[\n{}\n];\n",
            entries.join("\n")
        ),
    )?;
    Ok(())
}
