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

/// One number of one scenario, for both servers.
#[derive(Debug, Clone)]
pub struct Row {
    pub section: String,
    pub metric: String,
    pub ours: Option<f64>,
    pub node: Option<f64>,
    pub decimals: usize,
}

#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
    index: BTreeMap<(String, String), usize>,
    pub notes: Vec<String>,
    /// Checks that failed (invariant violations, leftovers); makes the exit code non-zero.
    pub failures: usize,
}

impl Report {
    pub fn set(
        &mut self,
        kind: crate::server::Kind,
        section: &str,
        metric: &str,
        v: Option<f64>,
        decimals: usize,
    ) {
        let key = (section.to_string(), metric.to_string());
        let i = *self.index.entry(key).or_insert_with(|| {
            self.rows.push(Row {
                section: section.to_string(),
                metric: metric.to_string(),
                ours: None,
                node: None,
                decimals,
            });
            self.rows.len() - 1
        });
        match kind {
            crate::server::Kind::Ours => self.rows[i].ours = v,
            crate::server::Kind::Node => self.rows[i].node = v,
        }
        println!(
            "  [{}] {section} | {metric} = {}",
            kind.label(),
            fmt(v, decimals)
        );
    }

    pub fn note(&mut self, kind: crate::server::Kind, text: String) {
        let line = format!("[{}] {text}", kind.label());
        println!("  NOTE {line}");
        self.notes.push(line);
    }

    /// A failed check: noted, and counted for the exit code.
    pub fn fail(&mut self, kind: crate::server::Kind, text: String) {
        self.failures += 1;
        self.note(kind, format!("CHECK FAILED: {text}"));
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
        println!();
        println!("=== side by side (ratio = ours / node) ===");
        println!(
            "{:<w0$}  {:<w1$}  {:>14}  {:>14}  {:>10}",
            "scenario", "metric", "ours", "node", "ours/node"
        );
        println!("{}", "-".repeat(w0 + w1 + 48));
        let mut last = "";
        for r in &self.rows {
            let sec = if r.section == last {
                ""
            } else {
                r.section.as_str()
            };
            last = &r.section;
            println!(
                "{:<w0$}  {:<w1$}  {:>14}  {:>14}  {:>10}",
                sec,
                r.metric,
                fmt(r.ours, r.decimals),
                fmt(r.node, r.decimals),
                ratio(r.ours, r.node)
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
        println!("=== markdown ===");
        println!("| scenario | metric | ours | node | ours/node |");
        println!("|---|---|---:|---:|---:|");
        for r in &self.rows {
            println!(
                "| {} | {} | {} | {} | {} |",
                r.section,
                r.metric,
                fmt(r.ours, r.decimals),
                fmt(r.node, r.decimals),
                ratio(r.ours, r.node)
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
