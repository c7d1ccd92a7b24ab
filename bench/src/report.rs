//! The results: one [`Row`] per figure, its target from the issue, and the
//! two renderings (a text table and JSON).

use serde::Serialize;
use serde_json::{Value, json};

/// Which way a figure improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

/// The goal a figure is held to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Informational only.
    None,
    /// berth / distribution ≥ x (figures where higher is better).
    RatioAtLeast(f64),
    /// distribution / berth ≥ x: berth x times faster (times, lower is better).
    FasterBy(f64),
    /// berth's own figure ≥ x (e.g. a percentage of the dd rate).
    BerthAtLeast(f64),
    /// berth's own figure < x (e.g. MiB of peak RSS).
    BerthBelow(f64),
    /// berth / other ≤ x (times, lower is better: the agent's pull time as
    /// a fraction of ctr's).
    RatioAtMost(f64),
    /// berth's own figure ≤ x (the agent's idle RSS and binary size).
    BerthAtMost(f64),
}

impl Target {
    fn describe(self, unit: &str) -> String {
        match self {
            Target::None => "-".to_owned(),
            Target::RatioAtLeast(x) => format!(">= {x:.1}x"),
            Target::FasterBy(x) => format!("{x:.0}x faster (<= {:.2}x)", 1.0 / x),
            Target::BerthAtLeast(x) => format!("berth >= {x:.0} {unit}"),
            Target::BerthBelow(x) => format!("berth < {x:.0} {unit}"),
            Target::RatioAtMost(x) => format!("<= {x:.2}x"),
            Target::BerthAtMost(x) => format!("berth <= {x:.0} {unit}"),
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// The measurement it belongs to (`--only` name).
    pub measure: &'static str,
    pub label: String,
    pub unit: &'static str,
    pub better: Better,
    pub berth: f64,
    pub distribution: f64,
    /// Whether berth / distribution is meaningful for this row (it is not
    /// for a percentage of the dd rate, where it repeats the push ratio).
    pub show_ratio: bool,
    pub target: Target,
    /// Every timed sample (berth, distribution), when the figure is a median.
    pub samples: Option<(Vec<f64>, Vec<f64>)>,
}

impl Row {
    pub fn new(
        measure: &'static str,
        label: impl Into<String>,
        unit: &'static str,
        better: Better,
        (berth, distribution): (f64, f64),
        target: Target,
    ) -> Row {
        Row {
            measure,
            label: label.into(),
            unit,
            better,
            berth,
            distribution,
            show_ratio: true,
            target,
            samples: None,
        }
    }

    pub fn with_samples(mut self, berth: Vec<f64>, distribution: Vec<f64>) -> Row {
        self.samples = Some((berth, distribution));
        self
    }

    pub fn without_ratio(mut self) -> Row {
        self.show_ratio = false;
        self
    }

    pub fn ratio(&self) -> Option<f64> {
        (self.show_ratio && self.distribution > 0.0).then(|| self.berth / self.distribution)
    }

    /// Whether the target is met; `None` for informational rows.
    pub fn met(&self) -> Option<bool> {
        let ratio = self.berth / self.distribution;
        match self.target {
            Target::None => None,
            Target::RatioAtLeast(x) => Some(ratio >= x),
            Target::FasterBy(x) => Some(self.distribution / self.berth >= x),
            Target::BerthAtLeast(x) => Some(self.berth >= x),
            Target::BerthBelow(x) => Some(self.berth < x),
            Target::RatioAtMost(x) => Some(ratio <= x),
            Target::BerthAtMost(x) => Some(self.berth <= x),
        }
    }
}

/// Everything one run produced.
#[derive(Debug, Default)]
pub struct Report {
    /// Lines describing the set-up (servers, sizes, directories).
    pub header: Vec<String>,
    pub rows: Vec<Row>,
    /// The machine's dd fdatasync rate (MB/s) and its samples, if measured.
    pub dd: Option<(f64, Vec<f64>)>,
    /// Remarks on how figures were taken.
    pub notes: Vec<String>,
}

fn number(v: f64) -> String {
    // NaN marks a figure the other side does not have.
    if v.is_nan() {
        return "-".to_owned();
    }
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

impl Report {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for line in &self.header {
            out.push_str(line);
            out.push('\n');
        }
        if let Some((dd, samples)) = &self.dd {
            out.push_str(&format!(
                "machine: dd if=/dev/zero bs=1M conv=fdatasync on the data dirs' filesystem: {} MB/s (median of {})\n",
                number(*dd),
                samples.len()
            ));
        }
        out.push('\n');
        let headers = [
            "measurement",
            "unit",
            "berth",
            "distribution",
            "berth/dist",
            "better",
            "target",
            "met",
        ];
        let cells: Vec<[String; 8]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.label.clone(),
                    r.unit.to_owned(),
                    number(r.berth),
                    number(r.distribution),
                    r.ratio()
                        .map(|x| ratio_cell(x, r.better))
                        .unwrap_or_else(|| "-".to_owned()),
                    match r.better {
                        Better::Higher => "higher".to_owned(),
                        Better::Lower => "lower".to_owned(),
                    },
                    r.target.describe(r.unit),
                    match r.met() {
                        None => "-".to_owned(),
                        Some(true) => "yes".to_owned(),
                        Some(false) => "NO".to_owned(),
                    },
                ]
            })
            .collect();
        let mut widths = headers.map(str::len);
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let render = |row: &[String]| {
            let mut line = String::new();
            for (i, (c, w)) in row.iter().zip(widths).enumerate() {
                let pad = w - c.chars().count();
                // Text left-aligned, figures right-aligned.
                if (2..=4).contains(&i) {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(c);
                } else {
                    line.push_str(c);
                    line.push_str(&" ".repeat(pad));
                }
                line.push_str("  ");
            }
            line.trim_end().to_owned() + "\n"
        };
        out.push_str(&render(&headers.map(str::to_owned)));
        out.push_str(&render(&widths.map(|w| "-".repeat(w))));
        for row in &cells {
            out.push_str(&render(row));
        }
        let judged: Vec<&Row> = self.rows.iter().filter(|r| r.met().is_some()).collect();
        let missed: Vec<&str> = judged
            .iter()
            .filter(|r| r.met() == Some(false))
            .map(|r| r.label.trim())
            .collect();
        out.push_str(&format!(
            "\ntargets met: {}/{}",
            judged.len() - missed.len(),
            judged.len()
        ));
        if !missed.is_empty() {
            out.push_str(&format!("; missed: {}", missed.join("; ")));
        }
        out.push('\n');
        if !self.notes.is_empty() {
            out.push_str("\nnotes:\n");
            for note in &self.notes {
                out.push_str(&format!("- {note}\n"));
            }
        }
        out
    }

    /// The machine-readable form.
    pub fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let mut v = json!({
                    "measure": r.measure,
                    "label": r.label,
                    "unit": r.unit,
                    "better": r.better,
                    "berth": r.berth,
                    "distribution": r.distribution,
                    "ratio": r.ratio(),
                    "target": r.target.describe(r.unit),
                    "met": r.met(),
                });
                if let Some((b, d)) = &r.samples {
                    v["samples"] = json!({ "berth": b, "distribution": d });
                }
                v
            })
            .collect();
        json!({
            "header": self.header,
            "dd_mb_per_s": self.dd.as_ref().map(|(v, _)| *v),
            "dd_samples": self.dd.as_ref().map(|(_, s)| s.clone()),
            "results": rows,
            "notes": self.notes,
        })
    }
}

/// berth/distribution, with the speed-up spelled out for times well below 1.
fn ratio_cell(ratio: f64, better: Better) -> String {
    let digits = if ratio >= 0.1 { 2 } else { 4 };
    let mut cell = format!("{ratio:.digits$}x");
    if better == Better::Lower && ratio > 0.0 && ratio < 0.1 {
        cell.push_str(&format!(" (1/{:.0})", 1.0 / ratio));
    }
    cell
}

/// The median of `samples` (mean of the middle two for an even count).
pub fn median(samples: &[f64]) -> f64 {
    assert!(!samples.is_empty(), "median of no samples");
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    if s.len() % 2 == 1 {
        s[mid]
    } else {
        (s[mid - 1] + s[mid]) / 2.0
    }
}

/// The `p`-th percentile (0–100, nearest rank) of `samples`.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    assert!(!samples.is_empty(), "percentile of no samples");
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 99.0), 99.0);
        assert_eq!(percentile(&s, 100.0), 100.0);
        assert_eq!(percentile(&[5.0], 99.0), 5.0);
    }

    #[test]
    fn targets() {
        let r = |berth, dist, target, better| {
            Row::new("x", "x", "u", better, (berth, dist), target).met()
        };
        assert_eq!(
            r(13.0, 10.0, Target::RatioAtLeast(1.3), Better::Higher),
            Some(true)
        );
        assert_eq!(
            r(12.0, 10.0, Target::RatioAtLeast(1.3), Better::Higher),
            Some(false)
        );
        assert_eq!(
            r(10.0, 30.0, Target::FasterBy(3.0), Better::Lower),
            Some(true)
        );
        assert_eq!(
            r(11.0, 30.0, Target::FasterBy(3.0), Better::Lower),
            Some(false)
        );
        assert_eq!(
            r(80.0, 1.0, Target::BerthAtLeast(80.0), Better::Higher),
            Some(true)
        );
        assert_eq!(
            r(64.0, 1.0, Target::BerthBelow(64.0), Better::Lower),
            Some(false)
        );
        assert_eq!(
            r(7.0, 10.0, Target::RatioAtMost(0.7), Better::Lower),
            Some(true)
        );
        assert_eq!(
            r(7.1, 10.0, Target::RatioAtMost(0.7), Better::Lower),
            Some(false)
        );
        assert_eq!(
            r(15.0, f64::NAN, Target::BerthAtMost(15.0), Better::Lower),
            Some(true)
        );
        assert_eq!(r(1.0, 1.0, Target::None, Better::Lower), None);
    }

    #[test]
    fn table_marks_missed_targets() {
        let report = Report {
            rows: vec![
                Row::new(
                    "push",
                    "monolithic push",
                    "MB/s",
                    Better::Higher,
                    (100.0, 100.0),
                    Target::RatioAtLeast(1.3),
                ),
                Row::new(
                    "tags",
                    "tags list",
                    "ms",
                    Better::Lower,
                    (1.0, 10.0),
                    Target::FasterBy(3.0),
                ),
            ],
            ..Report::default()
        };
        let table = report.table();
        assert!(
            table.contains("targets met: 1/2; missed: monolithic push"),
            "{table}"
        );
        assert!(table.contains("0.10x"), "{table}");
        let json = report.json();
        assert_eq!(json["results"][0]["met"], json!(false));
        assert_eq!(json["results"][1]["ratio"], json!(0.1));
    }
}
