//! The HTML form of a report: one self-contained page, with its style sheet and an SVG chart
//! inline and no external asset, script or font, so it can be mailed or stored as it is.

use super::{database_rows, duration_text, optional_duration, snapshot_rows, summary_rows, time_text, Outcome, Report, CHART_RUNS};

/// Size of the chart's drawing area in SVG user units.
const CHART_WIDTH: f64 = 720.0;
const CHART_HEIGHT: f64 = 220.0;
/// Room left of and below the drawing area for the axis labels.
const CHART_LEFT: f64 = 60.0;
const CHART_BOTTOM: f64 = 48.0;

const PASS_COLOUR: &str = "#2e7d32";
const FAIL_COLOUR: &str = "#c62828";
const READY_COLOUR: &str = "#1565c0";
const CHECKS_COLOUR: &str = "#90caf9";

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}\
h1{font-size:1.5em}h1 .pass{color:#2e7d32}h1 .fail{color:#c62828}\
table{border-collapse:collapse;margin:0.5em 0 1.5em}\
th,td{border:1px solid #ccc;padding:0.3em 0.6em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}td.pass{color:#2e7d32;font-weight:bold}td.fail{color:#c62828;font-weight:bold}\
td.details{white-space:pre-wrap;word-break:break-word}svg text{font-size:11px;fill:#333}";

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn table(out: &mut String, id: &str, header: &[&str], rows: &[Vec<(String, &'static str)>]) {
    out.push_str(&format!("<table id=\"{id}\"><thead><tr>"));
    for h in header {
        out.push_str(&format!("<th>{}</th>", escape(h)));
    }
    out.push_str("</tr></thead><tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        for (text, class) in row {
            if class.is_empty() {
                out.push_str(&format!("<td>{}</td>", escape(text)));
            } else {
                out.push_str(&format!("<td class=\"{class}\">{}</td>", escape(text)));
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

fn plain(cells: impl IntoIterator<Item = String>) -> Vec<(String, &'static str)> {
    cells.into_iter().map(|c| (c, "")).collect()
}

/// Returns a round axis maximum at or above `max`: 1, 2 or 5 times a power of ten.
pub(super) fn axis_max(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|f| f * magnitude).find(|v| *v >= max).unwrap_or(10.0 * magnitude)
}

/// Draws the RTO of each run as two bars (start to ready, start to all checks done) over a
/// result marker, oldest run on the left.
pub(crate) fn render_chart(runs: &[&Report]) -> String {
    let width = CHART_LEFT + CHART_WIDTH + 10.0;
    let height = CHART_HEIGHT + CHART_BOTTOM + 20.0;
    let max = runs.iter().map(|r| r.rto_checks_seconds.max(r.rto_seconds.unwrap_or(0.0))).fold(0.0, f64::max);
    let top = axis_max(max);
    let scale = |seconds: f64| CHART_HEIGHT * (seconds / top).clamp(0.0, 1.0);
    let mut svg = format!(
        "<svg id=\"rto-chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" role=\"img\" aria-labelledby=\"rto-chart-title\">\
         <title id=\"rto-chart-title\">RTO and result of the last {} verification runs</title>\n",
        runs.len()
    );
    // Axis and grid: four steps from zero to the rounded maximum.
    for step in 0..=4 {
        let value = top * step as f64 / 4.0;
        let y = 10.0 + CHART_HEIGHT - scale(value);
        svg.push_str(&format!(
            "<line x1=\"{CHART_LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            CHART_LEFT + CHART_WIDTH,
            CHART_LEFT - 6.0,
            y + 4.0,
            escape(&duration_text(value))
        ));
    }

    let slot = CHART_WIDTH / runs.len().max(1) as f64;
    let bar = (slot * 0.3).min(28.0);
    for (i, run) in runs.iter().enumerate() {
        let x = CHART_LEFT + slot * i as f64 + slot / 2.0;
        let base = 10.0 + CHART_HEIGHT;
        let bars = [(run.rto_seconds, READY_COLOUR, "start to ready", -bar), (Some(run.rto_checks_seconds), CHECKS_COLOUR, "start to all checks done", 0.0)];
        for (seconds, colour, what, offset) in bars {
            let Some(seconds) = seconds else { continue };
            let h = scale(seconds);
            svg.push_str(&format!(
                "<rect class=\"rto\" x=\"{:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{h:.1}\" fill=\"{colour}\">\
                 <title>{}: {what} {}</title></rect>\n",
                x + offset,
                base - h,
                escape(&time_text(run.started)),
                escape(&duration_text(seconds))
            ));
        }

        let (colour, label) = match run.result {
            Outcome::Pass => (PASS_COLOUR, "pass"),
            Outcome::Fail => (FAIL_COLOUR, "fail"),
        };
        svg.push_str(&format!(
            "<circle class=\"result {label}\" cx=\"{x:.1}\" cy=\"{:.1}\" r=\"6\" fill=\"{colour}\"><title>{}: {label}</title></circle>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            base + 14.0,
            escape(&time_text(run.started)),
            base + 36.0,
            escape(&run.started.format("%m-%d %H:%M").to_string())
        ));
    }

    // Legend below the axis labels.
    svg.push_str(&format!(
        "<rect x=\"{CHART_LEFT}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{READY_COLOUR}\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\">start to ready</text>\
         <rect x=\"{:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{CHECKS_COLOUR}\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\">start to all checks done</text>\n",
        height - 12.0,
        CHART_LEFT + 14.0,
        height - 3.0,
        CHART_LEFT + 130.0,
        height - 12.0,
        CHART_LEFT + 144.0,
        height - 3.0
    ));
    svg.push_str("</svg>");
    svg
}

/// Renders `report` as one self-contained HTML page. `history` contains earlier reports, oldest
/// first; the chart shows up to [`CHART_RUNS`] runs, this one included.
pub fn render_html(report: &Report, history: &[Report]) -> String {
    let mut out = String::new();
    let (class, mark) = match report.result {
        Outcome::Pass => ("pass", "PASS"),
        Outcome::Fail => ("fail", "FAIL"),
    };
    let title = format!("Restore verification {mark}: {}", time_text(report.target_time));
    out.push_str(&format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n\
         <h1>Restore verification <span class=\"{class}\">{mark}</span>: {}</h1>\n",
        escape(&title),
        escape(&time_text(report.target_time))
    ));

    let summary: Vec<Vec<(String, &'static str)>> = summary_rows(report)
        .into_iter()
        .map(|(k, v)| {
            let value_class = match (k, report.result) {
                ("Result", Outcome::Pass) => "pass",
                ("Result", Outcome::Fail) => "fail",
                _ => "",
            };
            vec![(k.to_owned(), ""), (v, value_class)]
        })
        .collect();
    table(&mut out, "summary", &["", ""], &summary);

    if !report.databases.is_empty() {
        out.push_str("<h2>Databases</h2>\n");
        let rows: Vec<_> = database_rows(report).into_iter().map(plain).collect();
        table(&mut out, "databases", &["Database", "Base backup", "WAL range", "Ready after", "Newest restored change", "Connection"], &rows);
    }
    let snapshots = snapshot_rows(report);
    if !snapshots.is_empty() {
        out.push_str("<h2>Snapshots</h2>\n");
        let rows: Vec<_> = snapshots.into_iter().map(plain).collect();
        table(&mut out, "snapshots", &["Component", "Snapshot", "Completed", "Skew from target"], &rows);
    }

    out.push_str("<h2>Checks</h2>\n");
    let rows: Vec<Vec<(String, &'static str)>> = report
        .checks
        .iter()
        .map(|c| {
            let class = match c.result {
                Outcome::Pass => "pass",
                Outcome::Fail => "fail",
            };
            vec![
                (c.name.clone(), ""),
                (c.result.as_str().to_uppercase(), class),
                (format!("{:.2} s", c.seconds), ""),
                (c.details.clone(), "details"),
            ]
        })
        .collect();
    table(&mut out, "checks", &["Check", "Result", "Time", "Details"], &rows);

    let start = history.len().saturating_sub(CHART_RUNS - 1);
    let runs: Vec<&Report> = history[start..].iter().chain(std::iter::once(report)).collect();
    out.push_str("<h2>Past runs</h2>\n");
    out.push_str(&render_chart(&runs));
    out.push('\n');
    let rows: Vec<_> = runs
        .iter()
        .rev()
        .map(|r| {
            let class = match r.result {
                Outcome::Pass => "pass",
                Outcome::Fail => "fail",
            };
            vec![
                (time_text(r.started), ""),
                (r.result.as_str().to_uppercase(), class),
                (optional_duration(r.rto_seconds), ""),
                (duration_text(r.rto_checks_seconds), ""),
                (optional_duration(r.rpo_seconds), ""),
            ]
        })
        .collect();
    table(&mut out, "history", &["Run", "Result", "RTO to ready", "RTO to checks done", "RPO"], &rows);
    out.push_str("</body></html>\n");
    out
}
