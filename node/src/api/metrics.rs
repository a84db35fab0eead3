//! `GET /metrics`: the node's counters and gauges in the Prometheus text exposition format
//! (version 0.0.4: `# HELP`, `# TYPE`, then `name value` or `name{label="v"} value` per
//! line).
//!
//! The backend ([`super::ApiBackend::metrics`]) lists its samples; the driver (kernel
//! runtime) adds its own (peers, uptime, store) through the replica, and the server adds what
//! only it knows (the TEE the driver reported in [`super::ApiConfig::tee`], open
//! connections). Values are unsigned integers: no floats anywhere in the node.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

/// The `Content-Type` of a Prometheus text exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Most samples rendered in one answer (a bound on the body, whatever the backend lists).
pub const SAMPLES_MAX: usize = 256;

/// How a sample behaves over time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Only grows (a restart resets it); named `…_total`.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// One sample: a metric without labels, or with one label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metric {
    /// `[a-zA-Z_:][a-zA-Z0-9_:]*`, conventionally `cairn_…`.
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricKind,
    /// `(label, value)`; the value is escaped when rendered.
    pub label: Option<(&'static str, String)>,
    pub value: u64,
}

impl Metric {
    pub fn gauge(name: &'static str, help: &'static str, value: u64) -> Metric {
        Metric {
            name,
            help,
            kind: MetricKind::Gauge,
            label: None,
            value,
        }
    }

    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Metric {
        Metric {
            kind: MetricKind::Counter,
            ..Metric::gauge(name, help, value)
        }
    }

    /// The same sample with one label.
    pub fn with_label(mut self, label: &'static str, value: &str) -> Metric {
        self.label = Some((label, String::from(value)));
        self
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Renders `samples` (at most [`SAMPLES_MAX`]; samples with invalid names are skipped). Each
/// name gets its `# HELP`/`# TYPE` lines once, before its first sample.
pub fn render(samples: &[Metric]) -> String {
    let mut out = String::new();
    let mut described: Vec<&str> = Vec::new();
    for m in samples.iter().take(SAMPLES_MAX) {
        let label_ok = m.label.as_ref().is_none_or(|(l, _)| valid_name(l));
        if !valid_name(m.name) || !label_ok {
            continue;
        }
        if !described.contains(&m.name) {
            described.push(m.name);
            let kind = match m.kind {
                MetricKind::Counter => "counter",
                MetricKind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {} {}", m.name, escape_help(m.help));
            let _ = writeln!(out, "# TYPE {} {kind}", m.name);
        }
        match &m.label {
            Some((label, value)) => {
                let _ = writeln!(
                    out,
                    "{}{{{label}=\"{}\"}} {}",
                    m.name,
                    escape_label(value),
                    m.value
                );
            }
            None => {
                let _ = writeln!(out, "{} {}", m.name, m.value);
            }
        }
    }
    out
}

/// HELP text: backslash and newline escaped.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Label values: backslash, double quote and newline escaped.
fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_help_type_and_samples() {
        let text = render(&[
            Metric::gauge("cairn_finalized_height", "newest finalized height", 42),
            Metric::counter("cairn_batches_executed_total", "batches", 7),
            Metric::gauge("cairn_tee_info", "the TEE", 1).with_label("tee", "none"),
        ]);
        assert_eq!(
            text,
            "# HELP cairn_finalized_height newest finalized height\n\
             # TYPE cairn_finalized_height gauge\n\
             cairn_finalized_height 42\n\
             # HELP cairn_batches_executed_total batches\n\
             # TYPE cairn_batches_executed_total counter\n\
             cairn_batches_executed_total 7\n\
             # HELP cairn_tee_info the TEE\n\
             # TYPE cairn_tee_info gauge\n\
             cairn_tee_info{tee=\"none\"} 1\n"
        );
    }

    #[test]
    fn one_description_per_name_and_escaped_labels() {
        let text = render(&[
            Metric::gauge("m", "h\nx", 1).with_label("k", "a\"b\\c"),
            Metric::gauge("m", "h\nx", 2).with_label("k", "d"),
        ]);
        assert_eq!(text.matches("# TYPE m gauge").count(), 1);
        assert!(text.contains("# HELP m h\\nx\n"));
        assert!(text.contains("m{k=\"a\\\"b\\\\c\"} 1\n"));
        assert!(text.contains("m{k=\"d\"} 2\n"));
    }

    #[test]
    fn invalid_names_are_skipped_and_samples_bounded() {
        let text = render(&[
            Metric::gauge("9bad", "", 1),
            Metric::gauge("bad-name", "", 1),
            Metric::gauge("ok", "", 1).with_label("bad label", "x"),
        ]);
        assert_eq!(text, "");
        let many: Vec<Metric> = (0..SAMPLES_MAX + 10)
            .map(|i| Metric::gauge("m", "", i as u64))
            .collect();
        let text = render(&many);
        assert_eq!(
            text.lines().filter(|l| !l.starts_with('#')).count(),
            SAMPLES_MAX
        );
    }
}
