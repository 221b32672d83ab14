//! The End chunk: how the recorded process exited and why the event stream ended.
//!
//! Payload (8 bytes, readers ignore anything after them): reason u8 | status kind u8 (0 unknown,
//! 1 exit code, 2 signal) | reserved u16 | status value i32.

use std::fmt;

/// Why the event stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EndReason {
    /// The collector ended the stream (`None` from the collector, `End` on the socket).
    Clean = 0,
    /// The peer went away without ending the stream (the process died or closed the socket).
    PeerVanished = 1,
    /// The stream broke off in the middle of a message.
    Truncated = 2,
    /// heaplens detached (`heaplens attach`): the stream ended cleanly and the process ran on.
    Detached = 3,
}

/// How the recorded process exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// Not known (the process was not ours to wait for, or still runs).
    Unknown,
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

/// What the End chunk records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndInfo {
    /// Why the stream ended.
    pub reason: EndReason,
    /// How the process exited.
    pub status: ExitStatus,
}

impl EndInfo {
    /// A clean end with a known exit code.
    pub fn clean(code: i32) -> Self {
        Self {
            reason: EndReason::Clean,
            status: ExitStatus::Code(code),
        }
    }

    /// The End chunk payload.
    pub fn to_bytes(self) -> [u8; 8] {
        let (kind, value) = match self.status {
            ExitStatus::Unknown => (0u8, 0i32),
            ExitStatus::Code(c) => (1, c),
            ExitStatus::Signal(s) => (2, s),
        };
        let mut b = [0u8; 8];
        b[0] = self.reason as u8;
        b[1] = kind;
        b[4..8].copy_from_slice(&value.to_le_bytes());
        b
    }

    /// Parses an End chunk payload.
    pub fn from_bytes(b: &[u8]) -> Result<Self, &'static str> {
        let [reason, kind, _, _, v0, v1, v2, v3, ..] = *b else {
            return Err("end payload too short");
        };
        let reason = match reason {
            0 => EndReason::Clean,
            1 => EndReason::PeerVanished,
            2 => EndReason::Truncated,
            3 => EndReason::Detached,
            _ => return Err("unknown end reason"),
        };
        let value = i32::from_le_bytes([v0, v1, v2, v3]);
        let status = match kind {
            0 => ExitStatus::Unknown,
            1 => ExitStatus::Code(value),
            2 => ExitStatus::Signal(value),
            _ => return Err("unknown exit status kind"),
        };
        Ok(Self { reason, status })
    }
}

impl fmt::Display for EndInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reason == EndReason::Detached {
            return f.write_str("detached; the process ran on");
        }
        match self.status {
            ExitStatus::Unknown => f.write_str("process exit status unknown")?,
            ExitStatus::Code(c) => write!(f, "process exited (code {c})")?,
            ExitStatus::Signal(s) => write!(f, "process exited (signal {s})")?,
        }
        match self.reason {
            EndReason::Clean => Ok(()),
            EndReason::PeerVanished => f.write_str("; the stream stopped without an end"),
            EndReason::Truncated => f.write_str("; the stream broke off mid-message"),
            EndReason::Detached => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for info in [
            EndInfo::clean(0),
            EndInfo {
                reason: EndReason::PeerVanished,
                status: ExitStatus::Signal(9),
            },
            EndInfo {
                reason: EndReason::Truncated,
                status: ExitStatus::Unknown,
            },
            EndInfo {
                reason: EndReason::Clean,
                status: ExitStatus::Code(-1),
            },
            EndInfo {
                reason: EndReason::Detached,
                status: ExitStatus::Unknown,
            },
        ] {
            assert_eq!(EndInfo::from_bytes(&info.to_bytes()), Ok(info));
        }
        assert!(EndInfo::from_bytes(&[0; 7]).is_err());
        assert!(EndInfo::from_bytes(&[9, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert_eq!(
            EndInfo {
                reason: EndReason::PeerVanished,
                status: ExitStatus::Signal(11)
            }
            .to_string(),
            "process exited (signal 11); the stream stopped without an end"
        );
    }
}
