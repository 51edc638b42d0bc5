//! The one Prometheus text writer (exposition format 0.0.4,
//! <https://prometheus.io/docs/instrumenting/exposition_formats/>): families with their `# HELP`
//! and `# TYPE` lines, samples with escaped labels, exact decimal seconds. The endpoint writes
//! its connection families with it and the roulette its own; nothing else formats metrics.
//!
//! Owns formatting only: it holds no counters and reads no clock.
use std::{fmt::Write as _, time::Duration};

/// A gauge family with one unlabelled sample.
pub fn gauge(out: &mut String, name: &str, help: &str, value: usize) {
    header(out, name, help, "gauge");
    sample(out, name, &[], value);
}

/// A counter family with one unlabelled sample.
pub fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "counter");
    sample(out, name, &[], value);
}

/// The `# HELP` and `# TYPE` lines of a family. In HELP text `\` and newline are escaped.
pub fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    for ch in help.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            _ => out.push(ch),
        }
    }
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

/// One `name{label="value",...} value` line. In label values `\`, `"` and newline are escaped.
pub fn sample(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    value: impl std::fmt::Display,
) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            for ch in v.chars() {
                match ch {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    _ => out.push(ch),
                }
            }
            out.push('"');
        }
        out.push('}');
    }
    // Writing to a String cannot fail.
    let _ = writeln!(out, " {value}");
}

/// A duration written as exact decimal seconds (`1.5`, `0.000000001`, `3`): no float rounding.
#[derive(Debug, Clone, Copy)]
pub struct Seconds(pub Duration);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (secs, nanos) = (self.0.as_secs(), self.0.subsec_nanos());
        if nanos == 0 {
            return write!(f, "{secs}");
        }
        // Trailing zeros dropped: 1.5, not 1.500000000.
        let (mut frac, mut width) = (nanos, 9);
        while frac % 10 == 0 {
            frac /= 10;
            width -= 1;
        }
        write!(f, "{secs}.{frac:0width$}")
    }
}

/// Merges the expositions of several workers into one: each family's `# HELP` and `# TYPE`
/// once, then its samples from every worker, each labelled `worker="W"`. `parts` is
/// (worker label, exposition), in the order to show.
pub fn merge_workers(parts: &[(String, String)]) -> String {
    // Families in first-seen order, each with its header lines and its samples.
    let mut families: Vec<(String, Vec<&str>, Vec<String>)> = Vec::new();
    for (worker, text) in parts {
        let mut current: Option<usize> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# ") {
                let mut words = rest.splitn(3, ' ');
                let (kind, name) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                let i = match families.iter().position(|(n, _, _)| n == name) {
                    Some(i) => i,
                    None => {
                        families.push((name.to_owned(), Vec::new(), Vec::new()));
                        families.len() - 1
                    }
                };
                if (kind == "HELP" || kind == "TYPE")
                    && !families[i].1.iter().any(|l| l.starts_with(&format!("# {kind} ")))
                {
                    families[i].1.push(line);
                }
                current = Some(i);
            } else if !line.is_empty() {
                let labelled = match line.find(['{', ' ']) {
                    Some(at) if line.as_bytes()[at] == b'{' => {
                        let sep = if line[at + 1..].starts_with('}') { "" } else { "," };
                        format!("{}{{worker=\"{worker}\"{sep}{}", &line[..at], &line[at + 1..])
                    }
                    Some(at) => format!("{}{{worker=\"{worker}\"}}{}", &line[..at], &line[at..]),
                    None => continue,
                };
                match current {
                    Some(i) => families[i].2.push(labelled),
                    None => families.push((String::new(), Vec::new(), vec![labelled])),
                }
            }
        }
    }
    let mut out = String::new();
    for (_, headers, samples) in families {
        for line in headers {
            out.push_str(line);
            out.push('\n');
        }
        for line in samples {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_merge_into_one_family_each_with_a_worker_label() {
        let mut a = String::new();
        counter(&mut a, "chatd_x_total", "X.", 1);
        header(&mut a, "chatd_r_total", "R.", "counter");
        sample(&mut a, "chatd_r_total", &[("result", "ok")], 2);
        let mut b = String::new();
        counter(&mut b, "chatd_x_total", "X.", 3);
        header(&mut b, "chatd_r_total", "R.", "counter");
        sample(&mut b, "chatd_r_total", &[("result", "ok")], 4);
        let merged = merge_workers(&[("0".into(), a), ("1".into(), b)]);
        assert_eq!(
            merged,
            "# HELP chatd_x_total X.\n# TYPE chatd_x_total counter\n\
             chatd_x_total{worker=\"0\"} 1\nchatd_x_total{worker=\"1\"} 3\n\
             # HELP chatd_r_total R.\n# TYPE chatd_r_total counter\n\
             chatd_r_total{worker=\"0\",result=\"ok\"} 2\nchatd_r_total{worker=\"1\",result=\"ok\"} 4\n"
        );
    }
}
