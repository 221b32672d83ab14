//! A recording of many processes: the folder `heaplens record --follow-fork -o DIR` writes, one
//! `PID.hltrace` per process, each with its pid, its parent's (`parent_pid`) and its command line
//! in the metadata. Nothing else is needed to find them: the folder's `*.hltrace` files are the
//! processes. `stats`, `view` and `export` take a folder or a single trace; `--pid` picks one
//! process of a folder.

use std::path::{Path, PathBuf};

use heaplens_viewer::trace::TraceReader;

/// One process of a recording.
#[derive(Clone, Debug)]
pub struct ProcessTrace {
    /// Its trace file.
    pub path: PathBuf,
    /// Its pid.
    pub pid: u32,
    /// Its parent's pid, when the trace records it.
    pub parent_pid: Option<u64>,
    /// Its command line.
    pub command: Vec<String>,
    /// Events in its trace.
    pub events: u64,
}

impl ProcessTrace {
    /// Reads the metadata and event count of `path`.
    pub fn read(path: &Path) -> Result<Self, String> {
        let reader = TraceReader::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let meta = reader.metadata();
        Ok(Self {
            path: path.to_owned(),
            pid: meta.pid,
            parent_pid: meta
                .extra
                .get("parent_pid")
                .and_then(serde_json::Value::as_u64),
            command: meta.command.clone(),
            events: reader.total_events(),
        })
    }

    /// The command line as one string (`?` when unknown).
    pub fn command_line(&self) -> String {
        if self.command.is_empty() {
            "?".to_owned()
        } else {
            self.command.join(" ")
        }
    }
}

/// The processes of `path`: a folder's traces by pid, or the single trace `path` is. With
/// `pid`, only that process (an error naming the pids there are when it is missing).
pub fn select(path: &Path, pid: Option<u32>) -> Result<Vec<ProcessTrace>, String> {
    if !path.is_dir() {
        let one = ProcessTrace::read(path)?;
        return match pid {
            Some(p) if p != one.pid => Err(format!(
                "{} is the trace of pid {}, not {p}",
                path.display(),
                one.pid
            )),
            _ => Ok(vec![one]),
        };
    }
    let mut all = Vec::new();
    let entries = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for entry in entries {
        let file = entry
            .map_err(|e| format!("{}: {e}", path.display()))?
            .path();
        if file.extension().is_some_and(|x| x == "hltrace") {
            all.push(ProcessTrace::read(&file)?);
        }
    }
    if all.is_empty() {
        return Err(format!(
            "{} holds no traces (*.hltrace); record one with `heaplens record --follow-fork -o {} -- CMD`",
            path.display(),
            path.display()
        ));
    }
    all.sort_by_key(|p| p.pid);
    match pid {
        None => Ok(all),
        Some(p) => match all.iter().find(|t| t.pid == p) {
            Some(t) => Ok(vec![t.clone()]),
            None => Err(format!(
                "{} has no trace of pid {p}; it has pids {}",
                path.display(),
                all.iter()
                    .map(|t| t.pid.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        },
    }
}

/// The one trace `path` names: itself, or the only process of a folder; a folder of several
/// processes is an error that says how to name one (for commands that read a single trace).
pub fn single(path: &Path) -> Result<PathBuf, String> {
    if !path.is_dir() {
        return Ok(path.to_owned());
    }
    let all = select(path, None)?;
    match all.as_slice() {
        [one] => Ok(one.path.clone()),
        _ => Err(format!(
            "{} is a recording of {} processes (pids {}): name one trace, {}/PID.hltrace",
            path.display(),
            all.len(),
            all.iter()
                .map(|t| t.pid.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            path.display()
        )),
    }
}
