//! The cost report as text for a terminal (`routemesh cost`): tables whose
//! columns are as wide as their widest cell, so long tenant and model names
//! never push the numbers out of line.

use super::cost::{CostReport, Line, Period};

/// Which tables to print besides the totals by tenant and by model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breakdown {
    /// Tenants and models only.
    Totals,
    /// Also one row per hour or day of the report (its own period).
    ByPeriod,
}

impl CostReport {
    /// The report as tables for people.
    pub fn render(&self, breakdown: Breakdown) -> String {
        let mut out = String::new();
        let cf = self
            .counterfactual
            .as_ref()
            .map_or("(no pool prices known)".to_string(), |c| {
                format!(
                    "{} at {}/{} USD per M tokens in/out",
                    printable(&c.model),
                    c.input_usd_per_mtok,
                    c.output_usd_per_mtok
                )
            });
        out.push_str(&format!("Counterfactual: every request on {cf}\n"));
        let unit = match self.range.period {
            Period::Hour => "hour",
            Period::Day => "day",
        };
        let plural = |n: u64| if n == 1 { "" } else { "s" };
        out.push_str(&format!(
            "From {} to {} UTC: the last {} {unit}{}, the current one included\n\n",
            minute(&super::cost::period_name(self.range.from_ms)),
            minute(&super::cost::period_name(self.range.to_ms)),
            self.range.periods,
            plural(self.range.periods),
        ));
        for (title, lines) in [("TENANT", &self.by_tenant), ("MODEL", &self.by_model)] {
            let mut table = Table::new(title);
            for line in lines.iter().chain(std::iter::once(&self.total)) {
                table.row(printable(&line.name), line);
            }
            out.push_str(&table.render());
            out.push('\n');
        }
        if breakdown == Breakdown::ByPeriod {
            let (title, label): (&str, fn(&str) -> String) = match self.range.period {
                Period::Hour => ("HOUR (UTC)", minute),
                Period::Day => ("DAY (UTC)", |name| name.get(..10).unwrap_or(name).into()),
            };
            let mut table = Table::new(title);
            let mut quiet = 0u64;
            for period in &self.by_period {
                if period.line.attempts > 0.0 || period.line.cost_usd != 0.0 {
                    table.row(label(&period.line.name), &period.line);
                } else {
                    quiet += 1;
                }
            }
            table.row("total".into(), &self.total);
            out.push_str(&table.render());
            if quiet > 0 {
                out.push_str(&format!(
                    "({quiet} {unit}{} without requests left out)\n",
                    plural(quiet)
                ));
            }
            out.push('\n');
        }
        out
    }
}

/// `2026-12-04T13:00:00Z` as `2026-12-04 13:00`.
fn minute(rfc3339: &str) -> String {
    match (rfc3339.get(..10), rfc3339.get(11..16)) {
        (Some(day), Some(time)) => format!("{day} {time}"),
        _ => rfc3339.to_string(),
    }
}

/// Names come from clients (tenants) and operators (models): control
/// characters are shown escaped rather than sent to the terminal.
fn printable(name: &str) -> String {
    name.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

const COLUMNS: [&str; 9] = [
    "REQUESTS",
    "ATTEMPTS",
    "COST USD",
    "ALL-STRONGEST USD",
    "SAVED USD",
    "SAVED",
    "USD/REQ",
    "LARGE",
    "TOKENS IN/OUT",
];

/// Rows of cells: the first column left-aligned, the figures right-aligned.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(title: &str) -> Self {
        let header = std::iter::once(title)
            .chain(COLUMNS)
            .map(str::to_string)
            .collect();
        Self { rows: vec![header] }
    }

    fn row(&mut self, name: String, l: &Line) {
        let per_request = |v: String| if l.requests > 0.0 { v } else { "-".into() };
        self.rows.push(vec![
            name,
            format!("{:.0}", l.requests),
            format!("{:.0}", l.attempts),
            format!("{:.6}", l.cost_usd),
            format!("{:.6}", l.counterfactual_usd),
            format!("{:.6}", l.savings_usd),
            format!("{:.1}%", l.savings_share * 100.0),
            per_request(format!("{:.2e}", l.cost_per_request_usd)),
            per_request(format!("{:.1}%", l.large_share * 100.0)),
            format!("{:.0}/{:.0}", l.prompt_tokens, l.completion_tokens),
        ]);
    }

    fn render(&self) -> String {
        let columns = self.rows[0].len();
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, (cell, width)) in row.iter().zip(&widths).enumerate() {
                let pad = " ".repeat(width - cell.chars().count());
                if c == 0 {
                    line.push_str(cell);
                    line.push_str(&pad);
                } else {
                    line.push_str("  ");
                    line.push_str(&pad);
                    line.push_str(cell);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::cost::{ReportRange, report};
    use routemesh_telemetry::SpendRow;

    fn row(hour: u64, tenant: &str, model: &str, requests: f64, attempts: f64) -> SpendRow {
        SpendRow {
            period_start_ms: hour * Period::Hour.ms(),
            tenant: tenant.into(),
            model: model.into(),
            cost_usd: 0.001 * requests,
            requests,
            attempts,
            prompt_tokens: 10.0 * requests,
            completion_tokens: 20.0 * requests,
            follow_up_cost_usd: 0.0,
            follow_up_prompt_tokens: 0.0,
            follow_up_completion_tokens: 0.0,
        }
    }

    /// Where each cell of `line` ends (in characters): cells are separated
    /// by two spaces or more.
    fn cell_ends(line: &str) -> Vec<usize> {
        let chars: Vec<char> = line.chars().collect();
        let mut ends = Vec::new();
        for i in 0..chars.len() {
            let last = i + 1 == chars.len();
            if chars[i] != ' ' && (last || (chars[i + 1] == ' ' && chars.get(i + 2) == Some(&' ')))
            {
                ends.push(i + 1);
            }
        }
        ends
    }

    #[test]
    fn columns_line_up_whatever_the_names() {
        let long = "meta-llama/Llama-3.1-405B-Instruct-FP8-dynamic-with-a-very-long-suffix";
        let now = 30 * Period::Hour.ms() + 5;
        let rows = [
            row(28, "acme", "small", 4.0, 5.0),
            row(30, "a-tenant-with-a-long-name", long, 2.0, 2.0),
        ];
        let r = report(
            &rows,
            None,
            &[long.to_string()],
            ReportRange::last(3, Period::Hour, now),
        );
        let text = r.render(Breakdown::ByPeriod);
        // In each table, every figure ends where its column's header ends.
        let tables: Vec<&str> = text
            .split("\n\n")
            .filter(|t| t.contains("REQUESTS"))
            .collect();
        assert_eq!(tables.len(), 3, "{text}");
        for table in tables {
            let lines: Vec<&str> = table
                .lines()
                .skip_while(|l| !l.contains("REQUESTS"))
                .filter(|l| !l.starts_with('('))
                .collect();
            let header = cell_ends(lines[0]);
            assert_eq!(header.len(), 10, "{table}");
            for line in &lines[1..] {
                assert_eq!(cell_ends(line)[1..], header[1..], "{line}\n{text}");
            }
        }
        assert_eq!(text.matches(long).count(), 1, "{text}");
        // The quiet hour is left out, and said to be.
        assert!(
            text.contains("(1 hour without requests left out)"),
            "{text}"
        );
        assert!(text.contains("HOUR (UTC)"), "{text}");
        assert!(text.contains("\n1970-01-02 04:00  "), "{text}");
        // Requests and attempts apart: acme's 4 requests took 5 calls.
        let acme = text.lines().find(|l| l.starts_with("acme")).unwrap();
        let cells: Vec<&str> = acme.split_whitespace().collect();
        assert_eq!(&cells[1..3], ["4", "5"]);
    }

    #[test]
    fn days_are_dates_and_totals_alone_have_no_periods() {
        let now = 3 * Period::Day.ms() + 5;
        let rows = [SpendRow {
            period_start_ms: 2 * Period::Day.ms(),
            ..row(0, "acme", "small", 1.0, 1.0)
        }];
        let r = report(&rows, None, &[], ReportRange::last(2, Period::Day, now));
        let text = r.render(Breakdown::ByPeriod);
        assert!(text.contains("DAY (UTC)"), "{text}");
        assert!(text.contains("\n1970-01-03  "), "{text}");
        assert!(!r.render(Breakdown::Totals).contains("DAY (UTC)"));
    }

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(printable("evil\u{1b}[2Jname"), "evil\\u{1b}[2Jname");
    }
}
