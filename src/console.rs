//! Where the runner's words go. Logs go through `tracing` to stderr and,
//! once a run directory exists, as JSON lines to its `runner.log.jsonl`.
//! On a terminal a run shows a live status line (an `indicatif` spinner);
//! every other line, logs included, is printed above it, never through it.
//! Elsewhere (CI, a pipe) the status is printed as plain periodic lines.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

static RUN_LOG: Mutex<Option<std::fs::File>> = Mutex::new(None);
static LIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Sets up logging: stderr (filtered by `FAULTLINE_LOG`, default
/// `faultline=info`; no colour off a terminal or under `NO_COLOR`) and the
/// run's JSON log (info and up) once `attach_run_log` names it.
pub fn init() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = EnvFilter::try_from_env("FAULTLINE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("faultline=info"));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(|| StderrAboveLive)
        .with_ansi(color())
        .with_filter(filter);
    let json = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(|| RunLogWriter)
        .with_filter(EnvFilter::new("faultline=info"));
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(json)
        .try_init();
}

fn color() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

/// From now on, log lines also go to `path` as JSON lines.
pub fn attach_run_log(path: &Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    *RUN_LOG.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    Ok(())
}

struct RunLogWriter;

impl Write for RunLogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(f) = RUN_LOG.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            f.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Stderr, above the live line when there is one.
struct StderrAboveLive;

impl Write for StderrAboveLive {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let live = LIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match live {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Says one line to the user on stderr, above the live line if any.
pub fn say(line: &str) {
    let mut w = StderrAboveLive;
    let _ = w.write_all(format!("{line}\n").as_bytes());
}

/// The live status of a run: a spinner line on a terminal, nothing
/// elsewhere (the caller prints plain lines then).
pub struct Live {
    bar: Option<ProgressBar>,
}

impl Live {
    pub fn start() -> Live {
        if !std::io::stderr().is_terminal() {
            return Live { bar: None };
        }
        let bar = ProgressBar::new_spinner();
        let style = if color() {
            "{spinner:.cyan} {elapsed_precise} {msg}"
        } else {
            "{spinner} {elapsed_precise} {msg}"
        };
        bar.set_style(
            ProgressStyle::with_template(style)
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        *LIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
        Live { bar: Some(bar) }
    }

    /// Whether the status shows live (a terminal).
    pub fn is_live(&self) -> bool {
        self.bar.is_some()
    }

    pub fn set(&self, status: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(status.to_string());
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            *LIVE.lock().unwrap_or_else(|e| e.into_inner()) = None;
            bar.finish_and_clear();
        }
    }
}

/// A duration in milliseconds as people read it: `450 ms`, `1.2 s`, `140 s`.
pub fn ms_text(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..10_000 => format!("{:.1} s", ms as f64 / 1e3),
        _ => format!("{} s", (ms + 500) / 1_000),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_at_their_scale() {
        assert_eq!(super::ms_text(450), "450 ms");
        assert_eq!(super::ms_text(1_040), "1.0 s");
        assert_eq!(super::ms_text(140_674), "141 s");
    }
}
