//! What a scenario found ([`Report`]), whether it passed ([`verdict`]), and the table
//! at the end: one row per scenario, for the terminal and as Markdown.

use std::time::Duration;

use crate::client::Tally;
use crate::Scenario;

/// What a scenario found, filled in as it runs: a scenario that times out still shows
/// what it counted and where it was.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) id: &'static str,
    /// What the scenario is doing or waiting for now.
    pub(crate) phase: String,
    /// Clients that must be served (or refused, up to `refusals_expected`).
    pub(crate) tally: Tally,
    /// Clients whose connections lived in a process the scenario killed: lost by nature,
    /// counted in the table and never failed on, unless their bytes came back wrong.
    pub(crate) victims: Tally,
    pub(crate) refusals_expected: u64,
    pub(crate) notes: Vec<String>,
    pub(crate) problems: Vec<String>,
}

impl Report {
    pub(crate) fn at(&mut self, phase: impl Into<String>) {
        self.phase = phase.into();
        eprintln!("   {}: {}", self.id, self.phase);
    }

    pub(crate) fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    pub(crate) fn problem(&mut self, text: impl Into<String>) {
        let text = text.into();
        eprintln!("   {}: problem: {text}", self.id);
        self.problems.push(text);
    }

    /// A wait that failed: the scenario fails, but carries on, so the clients it already
    /// started are still settled and counted.
    pub(crate) fn failed(&mut self, e: &anyhow::Error, logs: &str) {
        eprintln!("   {}: {e:#}\n{logs}", self.id);
        self.problems
            .push(first_line(&format!("{e:#}")).to_string());
    }
}

/// Whether a scenario passed: nothing went wrong in its own checks, none of its clients
/// was lost, reset or corrupted, none refused beyond what it expects, and no victim of a
/// kill got wrong bytes.
pub(crate) fn verdict(
    tally: &Tally,
    victims: &Tally,
    refusals_expected: u64,
    problems: usize,
) -> bool {
    problems == 0
        && tally.lost == 0
        && tally.reset == 0
        && tally.corrupted == 0
        && tally.refused <= refusals_expected
        && victims.corrupted == 0
}

#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) id: &'static str,
    pub(crate) title: &'static str,
    pub(crate) counts: Tally,
    pub(crate) duration: Duration,
    pub(crate) passed: bool,
    pub(crate) note: String,
}

impl Row {
    pub(crate) fn new(s: &Scenario, rep: Report, duration: Duration) -> Row {
        let passed = verdict(
            &rep.tally,
            &rep.victims,
            rep.refusals_expected,
            rep.problems.len(),
        );
        let mut counts = rep.tally.clone();
        counts.merge(&rep.victims);
        let mut parts: Vec<String> = rep
            .problems
            .iter()
            .map(|p| format!("problem: {p}"))
            .collect();
        parts.extend(rep.notes);
        Row {
            id: s.id,
            title: s.title,
            counts,
            duration,
            passed,
            note: parts.join("; "),
        }
    }

    pub(crate) fn cells(&self) -> [String; 9] {
        let c = &self.counts;
        [
            format!("{} {}", self.id, self.title),
            c.served.to_string(),
            c.lost.to_string(),
            c.refused.to_string(),
            c.reset.to_string(),
            c.corrupted.to_string(),
            format!("{:.1} s", self.duration.as_secs_f64()),
            if self.passed { "PASS" } else { "FAIL" }.to_string(),
            self.note.clone(),
        ]
    }
}

pub(crate) const HEAD: [&str; 9] = [
    "scenario",
    "served",
    "lost",
    "refused",
    "reset",
    "corrupted",
    "duration",
    "result",
    "note",
];

/// The table for the terminal: the scenario column left-aligned, counts and duration
/// right-aligned, the note last and unpadded.
pub(crate) fn render_text(rows: &[Row]) -> String {
    let head = HEAD.map(str::to_string);
    let body: Vec<[String; 9]> = rows.iter().map(Row::cells).collect();
    let mut width = HEAD.map(str::len);
    for cells in &body {
        for (w, cell) in width.iter_mut().zip(cells) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String; 9]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(width).enumerate() {
            match i {
                8 => out.push_str(cell),
                0 | 7 => out.push_str(&format!("{cell:<w$}  ")),
                _ => out.push_str(&format!("{cell:>w$}  ")),
            }
        }
        out.trim_end().to_string()
    };
    let rule = "-".repeat(width.iter().sum::<usize>() + 2 * (width.len() - 1));
    let mut lines = vec![line(&head), rule];
    lines.extend(body.iter().map(line));
    lines.join("\n")
}

pub(crate) fn render_markdown(rows: &[Row]) -> String {
    let mut out = format!(
        "| {} |\n|---|---:|---:|---:|---:|---:|---:|---|---|\n",
        HEAD.join(" | ")
    );
    for r in rows {
        let cells: Vec<String> = r.cells().iter().map(|c| c.replace('|', "\\|")).collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

pub(crate) fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

pub(crate) fn with_logs(e: anyhow::Error, logs: &str) -> anyhow::Error {
    anyhow::anyhow!("{e:#}\n{logs}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn victims_of_a_kill_may_be_lost_but_never_corrupted() {
        let lost = Tally {
            lost: 3,
            reset: 2,
            ..Tally::default()
        };
        let clean = Tally {
            served: 10,
            ..Tally::default()
        };
        assert!(verdict(&clean, &lost, 0, 0));
        assert!(!verdict(&lost, &Tally::default(), 0, 0));
        let corrupted = Tally {
            corrupted: 1,
            ..Tally::default()
        };
        assert!(!verdict(&clean, &corrupted, 0, 0));
        let refused = Tally {
            refused: 5,
            ..clean.clone()
        };
        assert!(verdict(&refused, &Tally::default(), 5, 0));
        assert!(!verdict(&refused, &Tally::default(), 4, 0));
        assert!(
            !verdict(&clean, &Tally::default(), 0, 1),
            "a problem fails it"
        );
    }

    fn row(id: &'static str, title: &'static str, served: u64, note: &str) -> Row {
        Row {
            id,
            title,
            counts: Tally {
                served,
                ..Tally::default()
            },
            duration: Duration::from_millis(1500),
            passed: true,
            note: note.to_string(),
        }
    }

    #[test]
    fn the_text_table_lines_its_columns_up() {
        let rows = [
            row("1", "short", 10_000, "a note"),
            row("3a", "a much longer title", 7, ""),
        ];
        let text = render_text(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "header, rule, two rows:\n{text}");
        // Counts are right-aligned under the header: their columns end together.
        let end_of = |line: &str, word: &str| line.find(word).map(|i| i + word.len());
        let served = end_of(lines[0], "served");
        assert_eq!(end_of(lines[2], "10000"), served, "\n{text}");
        assert_eq!(end_of(lines[3], "7"), served, "\n{text}");
        assert_eq!(lines[2].find("PASS"), lines[3].find("PASS"), "\n{text}");
    }

    #[test]
    fn the_markdown_table_has_a_row_per_scenario_and_escapes_pipes() {
        let md = render_markdown(&[row("6", "holder", 3, "a | b")]);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("| scenario | served |"));
        assert_eq!(
            lines[2],
            "| 6 holder | 3 | 0 | 0 | 0 | 0 | 1.5 s | PASS | a \\| b |"
        );
    }
}
