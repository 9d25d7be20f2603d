//! The command journal `commands.log`: every command run against the
//! cluster with its arguments, exit status, duration and output, secrets
//! redacted; `Ctx::run_command` and `retry_command` run them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::supervisor::{ProcState, SpawnSpec, describe_exit};
use super::{ClusterError, Ctx, Node, RETRY_INTERVAL_MS, RUN_DIR_ENV, io_err, write_file};
use crate::sys::utc_now;

/// Runs commands against the cluster under supervision and journals each
/// with its arguments, exit status and output.
pub(super) struct CommandLog {
    pub(super) path: PathBuf,
    pub(super) tmp_dir: PathBuf,
    pub(super) seq: AtomicU64,
    pub(super) redact: Vec<String>,
    pub(super) lock: Mutex<()>,
}

/// What a finished command left behind.
pub struct CommandOutput {
    pub success: bool,
    pub status: String,
    pub output: String,
}

impl CommandLog {
    pub(super) fn create(run_dir: &Path, redact: Vec<String>) -> Result<CommandLog, ClusterError> {
        let tmp_dir = run_dir.join("tmp");
        std::fs::create_dir_all(&tmp_dir).map_err(io_err(&tmp_dir))?;
        let path = run_dir.join("commands.log");
        write_file(&path, "")?;
        Ok(CommandLog {
            path,
            tmp_dir,
            seq: AtomicU64::new(0),
            redact,
            lock: Mutex::new(()),
        })
    }

    pub(super) fn redacted(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in self.redact.iter().filter(|s| !s.is_empty()) {
            out = out.replace(secret.as_str(), "<redacted>");
        }
        out
    }

    pub(super) fn append(&self, entry: &str) {
        // A poisoned lock only means another writer panicked mid-append;
        // the file is still usable.
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&self.path) {
            let _ = f.write_all(self.redacted(entry).as_bytes());
        }
    }
}

impl Ctx {
    /// Runs one command to completion (killed at the command deadline) and
    /// journals it in `commands.log`.
    pub async fn run_command(
        &self,
        label: &str,
        argv: &[String],
        env: &[(String, String)],
    ) -> Result<CommandOutput, ClusterError> {
        let seq = self.cmdlog.seq.fetch_add(1, Ordering::Relaxed);
        let out_path = self.cmdlog.tmp_dir.join(format!("{seq}.out"));
        let mut full_env = env.to_vec();
        full_env.push((RUN_DIR_ENV.into(), self.run_dir.display().to_string()));
        let started = Instant::now();
        let timeout = Duration::from_millis(self.timeouts.command_ms);
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| ClusterError::Config(format!("{label}: empty command")))?;
        let state = self
            .sup
            .run(
                SpawnSpec {
                    program: PathBuf::from(program),
                    args: args.to_vec(),
                    env: full_env,
                    cwd: Some(self.run_dir.clone()),
                    log: Some(out_path.clone()),
                    label: label.to_string(),
                },
                timeout,
            )
            .await;
        let output = std::fs::read_to_string(&out_path).unwrap_or_default();
        let _ = std::fs::remove_file(&out_path);
        let (success, status) = match &state {
            Ok(ProcState::Exited(s)) => (s.success(), describe_exit(*s)),
            Ok(other) => (
                false,
                format!("{other:?} after deadline of {} ms", timeout.as_millis()),
            ),
            Err(e) => (false, e.to_string()),
        };
        let quoted: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
        self.cmdlog.append(&format!(
            "--- {} [{}] {}\n$ {}\n{}{}=> {} in {} ms\n\n",
            utc_now(),
            seq,
            label,
            quoted.join(" "),
            output,
            if output.is_empty() || output.ends_with('\n') {
                ""
            } else {
                "\n"
            },
            status,
            started.elapsed().as_millis()
        ));
        state?;
        Ok(CommandOutput {
            success,
            status,
            output,
        })
    }

    /// Runs a command until it exits 0 or the step deadline passes.
    pub async fn retry_command(
        &self,
        node: &Node,
        step: &str,
        argv: &[String],
    ) -> Result<CommandOutput, ClusterError> {
        let deadline = Instant::now() + Duration::from_millis(self.timeouts.step_ms);
        loop {
            let out = self.run_command(step, argv, &[]).await?;
            if out.success {
                return Ok(out);
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Step {
                    node: node.name.clone(),
                    step: step.to_string(),
                    detail: format!(
                        "{} after {} ms: {}",
                        out.status,
                        self.timeouts.step_ms,
                        last_line(&out.output)
                    ),
                    log: node.log.display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(RETRY_INTERVAL_MS)).await;
        }
    }
}

pub(crate) fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .to_string()
}

pub(super) fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_log_redacts_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let log = CommandLog::create(dir.path(), vec!["s3cr3t".into()]).unwrap();
        log.append("key import GK1 s3cr3t --yes\n");
        let text = std::fs::read_to_string(dir.path().join("commands.log")).unwrap();
        assert_eq!(text, "key import GK1 <redacted> --yes\n");
    }
}
