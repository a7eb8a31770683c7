//! The Markdown form of a report, for a chat message or an issue.

use super::{database_rows, duration_text, optional_duration, snapshot_rows, summary_rows, time_text, Outcome, Report};

/// Escapes text for a Markdown table cell: pipes and line breaks would end the cell.
fn cell(text: &str) -> String {
    text.replace('\\', "\\\\").replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    out.push_str(&format!("| {} |\n", header.join(" | ")));
    out.push_str(&format!("|{}\n", " --- |".repeat(header.len())));
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| cell(c)).collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out.push('\n');
}

/// Renders `report` as Markdown. `history` contains earlier reports, oldest first.
pub fn render_markdown(report: &Report, history: &[Report]) -> String {
    let mut out = String::new();
    let mark = match report.result {
        Outcome::Pass => "PASS",
        Outcome::Fail => "FAIL",
    };
    out.push_str(&format!("# Restore verification {mark}: {}\n\n", time_text(report.target_time)));

    let summary: Vec<Vec<String>> = summary_rows(report).into_iter().map(|(k, v)| vec![k.to_owned(), v]).collect();
    table(&mut out, &["", ""], &summary);

    if !report.databases.is_empty() {
        out.push_str("## Databases\n\n");
        let rows: Vec<Vec<String>> = database_rows(report).into_iter().map(Vec::from).collect();
        table(&mut out, &["Database", "Base backup", "WAL range", "Ready after", "Newest restored change", "Connection"], &rows);
    }
    let snapshots = snapshot_rows(report);
    if !snapshots.is_empty() {
        out.push_str("## Snapshots\n\n");
        let rows: Vec<Vec<String>> = snapshots.into_iter().map(Vec::from).collect();
        table(&mut out, &["Component", "Snapshot", "Completed", "Skew from target"], &rows);
    }

    out.push_str("## Checks\n\n");
    let rows: Vec<Vec<String>> = report
        .checks
        .iter()
        .map(|c| vec![c.name.clone(), c.result.as_str().to_uppercase(), format!("{:.2} s", c.seconds), c.details.clone()])
        .collect();
    table(&mut out, &["Check", "Result", "Time", "Details"], &rows);

    out.push_str("## Past runs\n\n");
    let rows: Vec<Vec<String>> = history
        .iter()
        .chain(std::iter::once(report))
        .rev()
        .map(|r| {
            vec![
                time_text(r.started),
                r.result.as_str().to_uppercase(),
                optional_duration(r.rto_seconds),
                duration_text(r.rto_checks_seconds),
                optional_duration(r.rpo_seconds),
            ]
        })
        .collect();
    table(&mut out, &["Run", "Result", "RTO to ready", "RTO to checks done", "RPO"], &rows);
    out
}
