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
    // Under `cargo run`, $CARGO is the cargo that launched us.
    let cargo = std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from);
    ensure_binary_with(&cargo, cache, krate, version, name).await
}

/// `ensure_binary` with an explicit cargo program (tests use a fake one).
pub async fn ensure_binary_with(
    cargo: &Path,
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
    // Another run may be building the same version: wait for it (on a
    // blocking thread) rather than build twice into one directory.
    let _lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((file, nix::Error::EWOULDBLOCK)) => {
            eprintln!(
                "faultline: another run is installing {krate} {version}; waiting for {}",
                lock_path.display()
            );
            let lp = lock_path.clone();
            tokio::task::spawn_blocking(move || Flock::lock(file, FlockArg::LockExclusive))
                .await
                .expect("the lock task does not panic")
                .map_err(|(_, source)| ProvisionError::Lock { path: lp, source })?
        }
        Err((_, source)) => {
            return Err(ProvisionError::Lock {
                path: lock_path,
                source,
            });
        }
    };
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
    let status = tokio::process::Command::new(cargo)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn executable(path: &Path, script: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, script).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A stand-in for cargo that records each call, takes a while, and
    /// installs a binary where `--root` says.
    fn fake_cargo(dir: &Path) -> PathBuf {
        let path = dir.join("fake-cargo");
        let calls = dir.join("calls");
        let script = format!(
            "#!/bin/sh\necho \"$@\" >> {}\nsleep 0.5\n\
             while [ \"$1\" != --root ]; do shift; done\n\
             mkdir -p \"$2/bin\" && echo '#!/bin/sh' > \"$2/bin/tool\" && chmod +x \"$2/bin/tool\"\n",
            calls.display()
        );
        executable(&path, &script);
        path
    }

    #[tokio::test]
    async fn two_runs_starting_at_once_install_once() {
        let dir = tempfile::tempdir().unwrap();
        let cargo = fake_cargo(dir.path());
        let cache = dir.path().join("cache");
        let a = ensure_binary_with(&cargo, &cache, "tool", "1.2.3", "tool");
        let b = ensure_binary_with(&cargo, &cache, "tool", "1.2.3", "tool");
        let (a, b) = tokio::join!(a, b);
        let expected = cache.join("tool/1.2.3/bin/tool");
        assert_eq!(a.unwrap(), expected);
        assert_eq!(b.unwrap(), expected);
        let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
        assert_eq!(calls.lines().count(), 1, "{calls}");
        assert!(
            calls.starts_with("install --locked tool --version 1.2.3 --root "),
            "{calls}"
        );
    }

    #[tokio::test]
    async fn an_installed_binary_is_used_without_running_cargo() {
        let dir = tempfile::tempdir().unwrap();
        let bin = cached_binary(dir.path(), "tool", "1.0.0", "tool");
        executable(&bin, "#!/bin/sh\n");
        let got = ensure_binary_with(
            Path::new("/nonexistent/cargo"),
            dir.path(),
            "tool",
            "1.0.0",
            "tool",
        )
        .await;
        assert_eq!(got.unwrap(), bin);
    }

    #[tokio::test]
    async fn a_failed_install_names_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let err = ensure_binary_with(Path::new("/bin/false"), dir.path(), "tool", "1.0.0", "tool")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cargo install --locked tool --version 1.0.0"),
            "{err}"
        );
    }
}
