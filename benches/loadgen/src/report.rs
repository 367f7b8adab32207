//! Percentiles and the side-by-side table.

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
    /// The row `set` last wrote, where a metric new to its section is inserted after.
    cursor: Option<usize>,
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
            cursor: None,
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

    /// A copy of this report's rows and notes under another title and right-hand label, to
    /// compare one left column with several right ones. Failures are not copied: they count
    /// once, in `self`.
    pub fn fork(&self, title: &str, right: &str) -> Report {
        Report {
            title: title.to_string(),
            labels: [self.labels[0].clone(), right.to_string()],
            ratio_right_over_left: self.ratio_right_over_left,
            rows: self.rows.clone(),
            cursor: None,
            notes: self.notes.clone(),
            failures: 0,
        }
    }

    fn find(&self, section: &str, metric: &str) -> Option<usize> {
        self.rows
            .iter()
            .position(|r| r.section == section && r.metric == metric)
    }

    /// The value of one metric in one column, if it was set.
    pub fn get(&self, col: Col, section: &str, metric: &str) -> Option<f64> {
        let row = &self.rows[self.find(section, metric)?];
        match col {
            Col::Left => row.left,
            Col::Right => row.right,
        }
    }

    /// Sets one value. A metric new to its section goes right after the one set just before
    /// it if that is in the same section, else at the end of its section: so a run reporting
    /// more metrics than the other column's (more processes, Redis counts) keeps each section
    /// together and in the order it reported them.
    pub fn set(
        &mut self,
        col: impl Into<Col>,
        section: &str,
        metric: &str,
        v: Option<f64>,
        decimals: usize,
    ) {
        let col = col.into();
        let i = self.find(section, metric).unwrap_or_else(|| {
            let after = self
                .cursor
                .filter(|&c| self.rows[c].section == section)
                .or_else(|| self.rows.iter().rposition(|r| r.section == section));
            let at = after.map_or(self.rows.len(), |a| a + 1);
            self.rows.insert(
                at,
                Row {
                    section: section.to_string(),
                    metric: metric.to_string(),
                    left: None,
                    right: None,
                    decimals,
                },
            );
            at
        });
        self.cursor = Some(i);
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

/// `a / b` with two decimals, "-" when either is missing or `b` is zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

/// A plain table (first column left-aligned, the others right-aligned), then the same as
/// markdown, in the style of `Report::print`.
pub fn print_table(title: &str, header: &[String], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .chain([&header[c]])
                .map(|v| v.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (v, &w))| {
                if c == 0 {
                    format!("{v:<w$}")
                } else {
                    format!("{v:>w$}")
                }
            })
            .collect();
        padded.join("  ")
    };
    println!();
    println!("=== {title} ===");
    println!("{}", line(header));
    println!(
        "{}",
        "-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1))
    );
    for r in rows {
        println!("{}", line(r));
    }
    println!();
    println!("=== markdown: {title} ===");
    println!("| {} |", header.join(" | "));
    println!("|---|{}", "---:|".repeat(header.len() - 1));
    for r in rows {
        println!("| {} |", r.join(" | "));
    }
}
