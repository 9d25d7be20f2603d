//! Installs the exact binary version a profile names, from the crate
//! registry, into a cache outside the work tree, once.
//!
//! The cache layout is `<cache>/<crate>/<version>/bin/<name>`. Building
//! Garage takes about ten minutes on two cores, so the build's own progress
//! is shown, an interrupted build resumes from its target directory, and
//! two runs starting at once serialise on a lock file instead of building
//! twice into the same place.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("cannot prepare cache directory {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: nix::Error },
    #[error("cannot run cargo to install {krate} {version}: {source} (is cargo on PATH?)")]
    Cargo {
        krate: String,
        version: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed with {status}; see its output above")]
    Failed { command: String, status: String },
    #[error("`{command}` succeeded but {path} does not exist")]
    Missing { command: String, path: PathBuf },
}

/// The default cache: `$XDG_CACHE_HOME/faultline`, else `~/.cache/faultline`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("faultline");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache").join("faultline")
}

/// Where `krate` `version`'s binary `name` lives in the cache.
pub fn cached_binary(cache: &Path, krate: &str, version: &str, name: &str) -> PathBuf {
    cache.join(krate).join(version).join("bin").join(name)
}

/// Returns the cached binary, installing it first if it is missing.
pub async fn ensure_binary(
    cache: &Path,
    krate: &str,
    version: &str,
    name: &str,
) -> Result<PathBuf, ProvisionError> {
    let bin = cached_binary(cache, krate, version, name);
    if is_executable(&bin) {
        return Ok(bin);
    }
    let dir = cache.join(krate);
    std::fs::create_dir_all(&dir).map_err(|source| ProvisionError::Cache {
        path: dir.clone(),
        source,
    })?;
    let lock_path = dir.join(format!("{version}.lock"));
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| ProvisionError::Cache {
            path: lock_path.clone(),
            source,
        })?;
    eprintln!(
        "faultline: waiting for the install lock {}",
        lock_path.display()
    );
    // Another run may be building the same version: wait for it (on a
    // blocking thread) rather than build twice into one directory.
    let lp = lock_path.clone();
    let _lock =
        tokio::task::spawn_blocking(move || Flock::lock(lock_file, FlockArg::LockExclusive))
            .await
            .expect("the lock task does not panic")
            .map_err(|(_, source)| ProvisionError::Lock { path: lp, source })?;
    if is_executable(&bin) {
        return Ok(bin);
    }
    let root = cache.join(krate).join(version);
    let target = cache.join("build").join(format!("{krate}-{version}"));
    let command = format!(
        "cargo install --locked {krate} --version {version} --root {} (target dir {})",
        root.display(),
        target.display()
    );
    eprintln!(
        "faultline: {krate} {version} is not installed; building it once (Garage takes about 10 minutes on 2 cores):"
    );
    eprintln!("faultline:   {command}");
    let started = Instant::now();
    let status = tokio::process::Command::new("cargo")
        .args(["install", "--locked", krate, "--version", version, "--root"])
        .arg(&root)
        .env("CARGO_TARGET_DIR", &target)
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|source| ProvisionError::Cargo {
            krate: krate.to_string(),
            version: version.to_string(),
            source,
        })?;
    if !status.success() {
        return Err(ProvisionError::Failed {
            command,
            status: status.to_string(),
        });
    }
    if !is_executable(&bin) {
        return Err(ProvisionError::Missing { command, path: bin });
    }
    eprintln!(
        "faultline: installed {} in {:.0} s",
        bin.display(),
        started.elapsed().as_secs_f64()
    );
    // The build tree is only needed to resume an interrupted build.
    let _ = std::fs::remove_dir_all(&target);
    Ok(bin)
}

pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
