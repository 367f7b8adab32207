//! Percentiles and the side-by-side table.

use std::collections::BTreeMap;

/// The `q`-quantile (0..=1) of a sorted slice, nearest-rank.
pub fn quantile(sorted: &[u32], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1] as f64)
}

/// One of the two value columns of a report. The main report has ours on the left and node
/// on the right (a `Kind` converts to its column); other reports name their columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col {
    Left,
    Right,
}

impl From<crate::server::Kind> for Col {
    fn from(kind: crate::server::Kind) -> Col {
        match kind {
            crate::server::Kind::Ours => Col::Left,
            crate::server::Kind::Node => Col::Right,
        }
    }
}

/// One number of one scenario, for both columns.
#[derive(Debug, Clone)]
pub struct Row {
    pub section: String,
    pub metric: String,
    pub left: Option<f64>,
    pub right: Option<f64>,
    pub decimals: usize,
}

pub struct Report {
    title: String,
    /// Column labels, left and right.
    labels: [String; 2],
    /// The ratio column is right/left instead of left/right.
    ratio_right_over_left: bool,
    rows: Vec<Row>,
    index: BTreeMap<(String, String), usize>,
    pub notes: Vec<String>,
    /// Checks that failed (invariant violations, leftovers); makes the exit code non-zero.
    pub failures: usize,
}

impl Default for Report {
    fn default() -> Self {
        Report::new("side by side", "ours", "node", false)
    }
}

impl Report {
    pub fn new(title: &str, left: &str, right: &str, ratio_right_over_left: bool) -> Report {
        Report {
            title: title.to_string(),
            labels: [left.to_string(), right.to_string()],
            ratio_right_over_left,
            rows: Vec::new(),
            index: BTreeMap::new(),
            notes: Vec::new(),
            failures: 0,
        }
    }

    pub fn label(&self, col: Col) -> &str {
        match col {
            Col::Left => &self.labels[0],
            Col::Right => &self.labels[1],
        }
    }

    fn ratio_label(&self) -> String {
        if self.ratio_right_over_left {
            format!("{}/{}", self.labels[1], self.labels[0])
        } else {
            format!("{}/{}", self.labels[0], self.labels[1])
        }
    }

    fn ratio(&self, r: &Row) -> String {
        if self.ratio_right_over_left {
            ratio(r.right, r.left)
        } else {
            ratio(r.left, r.right)
        }
    }

    pub fn set(
        &mut self,
        col: impl Into<Col>,
        section: &str,
        metric: &str,
        v: Option<f64>,
        decimals: usize,
    ) {
        let col = col.into();
        let key = (section.to_string(), metric.to_string());
        let i = *self.index.entry(key).or_insert_with(|| {
            self.rows.push(Row {
                section: section.to_string(),
                metric: metric.to_string(),
                left: None,
                right: None,
                decimals,
            });
            self.rows.len() - 1
        });
        match col {
            Col::Left => self.rows[i].left = v,
            Col::Right => self.rows[i].right = v,
        }
        println!(
            "  [{}] {section} | {metric} = {}",
            self.label(col),
            fmt(v, decimals)
        );
    }

    pub fn note(&mut self, col: impl Into<Col>, text: String) {
        let line = format!("[{}] {text}", self.label(col.into()));
        println!("  NOTE {line}");
        self.notes.push(line);
    }

    /// A failed check: noted, and counted for the exit code.
    pub fn fail(&mut self, col: impl Into<Col>, text: String) {
        self.failures += 1;
        self.note(col, format!("CHECK FAILED: {text}"));
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.notes.is_empty()
    }

    pub fn print(&self) {
        let w0 = self
            .rows
            .iter()
            .map(|r| r.section.len())
            .max()
            .unwrap_or(8)
            .max(8);
        let w1 = self
            .rows
            .iter()
            .map(|r| r.metric.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let rl = self.ratio_label();
        let w2 = rl.len().max(10);
        println!();
        println!("=== {} (ratio = {rl}) ===", self.title);
        println!(
            "{:<w0$}  {:<w1$}  {:>18}  {:>18}  {:>w2$}",
            "scenario", "metric", self.labels[0], self.labels[1], rl
        );
        println!("{}", "-".repeat(w0 + w1 + w2 + 44));
        let mut last = "";
        for r in &self.rows {
            let sec = if r.section == last {
                ""
            } else {
                r.section.as_str()
            };
            last = &r.section;
            println!(
                "{:<w0$}  {:<w1$}  {:>18}  {:>18}  {:>w2$}",
                sec,
                r.metric,
                fmt(r.left, r.decimals),
                fmt(r.right, r.decimals),
                self.ratio(r)
            );
        }
        if !self.notes.is_empty() {
            println!();
            println!("notes:");
            for n in &self.notes {
                println!("  - {n}");
            }
        }
        println!();
        println!("=== markdown: {} ===", self.title);
        println!(
            "| scenario | metric | {} | {} | {rl} |",
            self.labels[0], self.labels[1]
        );
        println!("|---|---|---:|---:|---:|");
        for r in &self.rows {
            println!(
                "| {} | {} | {} | {} | {} |",
                r.section,
                r.metric,
                fmt(r.left, r.decimals),
                fmt(r.right, r.decimals),
                self.ratio(r)
            );
        }
    }
}

pub fn fmt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.decimals$}"),
        Some(_) => "n/a".into(),
        None => "-".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}
