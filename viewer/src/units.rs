//! Units for people: every figure the viewer prints as bytes, a rate or a time goes through
//! these formatters, so the header, the axes, the tooltips and the event log agree. No egui here.
//!
//! Bytes are binary (B, KiB, MiB, GiB, as the allocator's own statistics print them), rates
//! decimal (/s, k/s, M/s, G/s), times from nanoseconds up to seconds.

use heaplens_alloc::stats::Bytes;

/// `48 B`, `1.5 KiB`, `12.0 MiB`, `3.2 GiB`.
pub fn bytes(n: impl TryInto<usize>) -> String {
    Bytes(n.try_into().unwrap_or(0)).to_string()
}

/// A unit to draw a series in: values are divided by `scale` and printed with `suffix`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scale {
    /// What one unit is worth.
    pub scale: f64,
    /// Its name, after the number (`MiB`, `M/s`).
    pub suffix: &'static str,
}

impl Scale {
    /// `value` (in base units) in this unit.
    pub fn of(self, value: f64) -> f64 {
        value / self.scale
    }

    /// `value`, already in this unit, with the unit: `12.5 MiB`, `90 M/s`.
    pub fn label(self, value: f64) -> String {
        format!("{} {}", number(value), self.suffix)
    }
}

const BYTE_SCALES: [Scale; 4] = [
    Scale {
        scale: 1.0,
        suffix: "B",
    },
    Scale {
        scale: 1024.0,
        suffix: "KiB",
    },
    Scale {
        scale: 1024.0 * 1024.0,
        suffix: "MiB",
    },
    Scale {
        scale: 1024.0 * 1024.0 * 1024.0,
        suffix: "GiB",
    },
];

const RATE_SCALES: [Scale; 4] = [
    Scale {
        scale: 1.0,
        suffix: "/s",
    },
    Scale {
        scale: 1e3,
        suffix: "k/s",
    },
    Scale {
        scale: 1e6,
        suffix: "M/s",
    },
    Scale {
        scale: 1e9,
        suffix: "G/s",
    },
];

fn pick(scales: &[Scale], max: f64) -> Scale {
    scales
        .iter()
        .rev()
        .find(|s| max >= s.scale)
        .copied()
        .unwrap_or(scales[0])
}

/// The byte unit for a series whose largest value is `max` bytes: the largest unit it fills
/// at least once (so an axis reads `0 … 900 MiB`, never `943718400`).
pub fn byte_scale(max: f64) -> Scale {
    pick(&BYTE_SCALES, max)
}

/// The rate unit for a series whose largest value is `max` per second.
pub fn rate_scale(max: f64) -> Scale {
    pick(&RATE_SCALES, max)
}

/// `950 /s`, `12.5 k/s`, `90 M/s`.
pub fn rate(per_second: f64) -> String {
    let s = rate_scale(per_second.abs());
    s.label(s.of(per_second))
}

/// A number as short as it can be while keeping three significant digits: `90`, `12.5`,
/// `0.25`.
pub fn number(v: f64) -> String {
    let a = v.abs();
    let s = if a == 0.0 || a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// A time since the trace started, to the nanosecond as it was recorded: `12.345 s`.
pub fn seconds(ns: u64) -> String {
    format!("{:.3} s", ns as f64 / 1e9)
}

/// A duration in the unit that suits it: `850 ns`, `12.5 µs`, `3.25 ms`, `1.5 s`.
pub fn duration(ns: f64) -> String {
    let a = ns.abs();
    if a < 1e3 {
        format!("{} ns", number(ns))
    } else if a < 1e6 {
        format!("{} µs", number(ns / 1e3))
    } else if a < 1e9 {
        format!("{} ms", number(ns / 1e6))
    } else {
        format!("{} s", number(ns / 1e9))
    }
}

/// A time axis tick at `secs`, when the axis shows `span` seconds: milliseconds when the view
/// is under two seconds wide, seconds otherwise.
pub fn time_tick(secs: f64, span: f64) -> String {
    if span < 2.0 {
        format!("{} ms", number(secs * 1e3))
    } else {
        format!("{} s", number(secs))
    }
}

/// A percentage with one decimal: `12.5 %`.
pub fn percent(f: f64) -> String {
    format!("{:.1} %", f * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_rates_and_times_read_in_their_units() {
        assert_eq!(bytes(48u64), "48 B");
        assert_eq!(bytes(1536u64), "1.5 KiB");
        assert_eq!(byte_scale(900.0 * 1024.0 * 1024.0).suffix, "MiB");
        assert_eq!(byte_scale(0.0).suffix, "B");
        assert_eq!(rate(90_000_000.0), "90 M/s");
        assert_eq!(rate(12_500.0), "12.5 k/s");
        assert_eq!(rate(950.0), "950 /s");
        assert_eq!(rate_scale(1.5e9).label(1.5), "1.5 G/s");
        assert_eq!(duration(850.0), "850 ns");
        assert_eq!(duration(3_250_000.0), "3.25 ms");
        assert_eq!(duration(1.5e9), "1.5 s");
        assert_eq!(time_tick(0.0125, 0.5), "12.5 ms");
        assert_eq!(time_tick(3.0, 10.0), "3 s");
        assert_eq!(seconds(4_000_000), "0.004 s");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(20.0), "20");
        assert_eq!(percent(0.125), "12.5 %");
    }
}
