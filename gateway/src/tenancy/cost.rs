//! Cost reports: spend by tenant and model over a time range, next to the
//! counterfactual of sending every one of those requests to the pool's most
//! expensive model (same token counts, that model's prices). The difference is
//! what routing saved.

use routemesh_mesh::TokenPrices;
use serde::Serialize;

use routemesh_telemetry::SpendRow;

/// The model every request is compared against.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Counterfactual {
    pub model: String,
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
}

impl Counterfactual {
    /// The compared model's prices.
    pub fn prices(&self) -> TokenPrices {
        TokenPrices {
            input_usd_per_mtok: self.input_usd_per_mtok,
            output_usd_per_mtok: self.output_usd_per_mtok,
        }
    }

    /// What the row's requests would have cost on this model. A cascade's
    /// follow-up calls are left out: their requests were counted on their
    /// first answer.
    fn cost(&self, row: &SpendRow) -> f64 {
        let input = (row.prompt_tokens - row.follow_up_prompt_tokens).max(0.0);
        let output = (row.completion_tokens - row.follow_up_completion_tokens).max(0.0);
        self.prices().cost_usd(input, output)
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Line {
    pub name: String,
    /// Client requests, each counted once (see `SpendRow::requests`).
    pub requests: f64,
    /// Calls to workers: failed-over attempts and cascade follow-ups included.
    pub attempts: f64,
    pub cost_usd: f64,
    pub counterfactual_usd: f64,
    pub savings_usd: f64,
    /// savings / counterfactual, in [0, 1] (0 when nothing was spent).
    pub savings_share: f64,
    pub cost_per_request_usd: f64,
    pub prompt_tokens: f64,
    pub completion_tokens: f64,
    /// Client requests answered by a model of the large tier.
    pub large_requests: f64,
    /// large_requests / requests (0 without requests).
    pub large_share: f64,
}

impl Line {
    fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    fn add(&mut self, row: &SpendRow, counterfactual: f64, large: bool) {
        self.requests += row.requests;
        self.attempts += row.attempts;
        self.cost_usd += row.cost_usd;
        self.counterfactual_usd += counterfactual;
        self.prompt_tokens += row.prompt_tokens;
        self.completion_tokens += row.completion_tokens;
        if large {
            self.large_requests += row.requests;
        }
    }

    fn finish(mut self) -> Self {
        self.savings_usd = self.counterfactual_usd - self.cost_usd;
        self.savings_share = ratio(self.savings_usd, self.counterfactual_usd);
        self.cost_per_request_usd = ratio(self.cost_usd, self.requests);
        self.large_share = ratio(self.large_requests, self.requests);
        self
    }
}

/// `part / whole`, 0 when `whole` is not positive. Never -0.0: a sum of no
/// terms is -0.0 in Rust, and a page would show it as "-0.0%".
fn ratio(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { part / whole + 0.0 } else { 0.0 }
}

/// How a report's time is divided.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Hour,
    Day,
}

impl Period {
    pub fn ms(self) -> u64 {
        match self {
            Period::Hour => 3_600_000,
            Period::Day => 86_400_000,
        }
    }
}

/// The time a report covers: `periods` whole hours or days, the last being
/// the current one (still running at `to_ms`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct ReportRange {
    /// Start of the first period, milliseconds since the epoch.
    pub from_ms: u64,
    /// When the report was made: the end of the data.
    pub to_ms: u64,
    pub period: Period,
    pub periods: u64,
}

impl ReportRange {
    /// The last `periods` hours (or days), the current one included.
    pub fn last(periods: u64, period: Period, now_ms: u64) -> Self {
        let periods = periods.clamp(1, MAX_PERIODS);
        let first = (now_ms / period.ms()).saturating_sub(periods - 1);
        Self {
            from_ms: first * period.ms(),
            to_ms: now_ms,
            period,
            periods,
        }
    }

    /// The last `hours` hours, by hour or (covering them) by day.
    pub fn hours(hours: u64, period: Period, now_ms: u64) -> Self {
        let periods = match period {
            Period::Hour => hours,
            Period::Day => hours.div_ceil(24),
        };
        Self::last(periods, period, now_ms)
    }

    /// The start of every period, in order.
    fn starts(&self) -> impl Iterator<Item = u64> + use<> {
        let (first, ms) = (self.from_ms / self.period.ms(), self.period.ms());
        (first..first + self.periods).map(move |p| p * ms)
    }
}

/// The most periods a report holds: 400 days, as long as daily spend is kept.
pub const MAX_PERIODS: u64 = 24 * 400;

/// The spend of one hour or day.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeriodLine {
    /// Start of the period, milliseconds since the epoch (UTC).
    pub start_ms: u64,
    #[serde(flatten)]
    pub line: Line,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CostReport {
    #[serde(flatten)]
    pub range: ReportRange,
    pub counterfactual: Option<Counterfactual>,
    /// The models counted as large (the pool's large tier).
    pub large_models: Vec<String>,
    pub total: Line,
    pub by_tenant: Vec<Line>,
    pub by_model: Vec<Line>,
    /// Every period of the range in order, those without requests included
    /// (as zeros), for charts on a time axis.
    pub by_period: Vec<PeriodLine>,
}

/// Sums `rows` (read with `range`'s period) by tenant, model and period,
/// each next to its counterfactual.
pub fn report(
    rows: &[SpendRow],
    counterfactual: Option<Counterfactual>,
    large_models: &[String],
    range: ReportRange,
) -> CostReport {
    use std::collections::BTreeMap;
    let mut total = Line::named("total");
    let mut tenants: BTreeMap<&str, Line> = BTreeMap::new();
    let mut models: BTreeMap<&str, Line> = BTreeMap::new();
    let mut periods: BTreeMap<u64, Line> = range
        .starts()
        .map(|start| (start, Line::named(period_name(start))))
        .collect();
    for row in rows {
        let cf = counterfactual
            .as_ref()
            .map_or(row.cost_usd - row.follow_up_cost_usd, |c| c.cost(row));
        let large = large_models.contains(&row.model);
        total.add(row, cf, large);
        tenants
            .entry(&row.tenant)
            .or_insert_with(|| Line::named(&row.tenant))
            .add(row, cf, large);
        models
            .entry(&row.model)
            .or_insert_with(|| Line::named(&row.model))
            .add(row, cf, large);
        periods
            .entry(row.period_start_ms)
            .or_insert_with(|| Line::named(period_name(row.period_start_ms)))
            .add(row, cf, large);
    }
    CostReport {
        range,
        counterfactual,
        large_models: large_models.to_vec(),
        total: total.finish(),
        by_tenant: tenants.into_values().map(Line::finish).collect(),
        by_model: models.into_values().map(Line::finish).collect(),
        by_period: periods
            .into_iter()
            .map(|(start_ms, line)| PeriodLine {
                start_ms,
                line: line.finish(),
            })
            .collect(),
    }
}

/// A period's start as RFC 3339 in UTC, e.g. `2026-12-04T13:00:00Z`.
pub fn period_name(start_ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(start_ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tenant: &str, model: &str, cost: f64, n: f64, tin: f64, tout: f64) -> SpendRow {
        SpendRow {
            period_start_ms: 0,
            tenant: tenant.into(),
            model: model.into(),
            cost_usd: cost,
            requests: n,
            attempts: n,
            prompt_tokens: tin,
            completion_tokens: tout,
            follow_up_cost_usd: 0.0,
            follow_up_prompt_tokens: 0.0,
            follow_up_completion_tokens: 0.0,
        }
    }

    /// One hour, starting at 0.
    fn hour() -> ReportRange {
        ReportRange::last(1, Period::Hour, 1)
    }

    #[test]
    fn savings_against_the_strongest_model() {
        let strong = Counterfactual {
            model: "large".into(),
            input_usd_per_mtok: 10.0,
            output_usd_per_mtok: 30.0,
        };
        // 2 small requests (1000 in, 500 out in all) cost 0.0003; on "large"
        // they would have cost (10·1000 + 30·500)/1e6 = 0.025.
        let rows = [
            row("a", "small", 0.0003, 2.0, 1000.0, 500.0),
            row("a", "large", 0.025, 2.0, 1000.0, 500.0),
        ];
        let r = report(&rows, Some(strong), &[], hour());
        assert!((r.total.counterfactual_usd - 0.05).abs() < 1e-12);
        assert!((r.total.savings_usd - (0.05 - 0.0253)).abs() < 1e-12);
        assert!((r.by_model[1].savings_share - (0.025 - 0.0003) / 0.025).abs() < 1e-12);
        assert_eq!(r.by_model[0].savings_usd, 0.0);
    }

    #[test]
    fn a_cascades_escalation_is_spend_but_not_a_second_counterfactual() {
        let strong = Counterfactual {
            model: "large".into(),
            input_usd_per_mtok: 10.0,
            output_usd_per_mtok: 30.0,
        };
        // One request: the small model answered (100 in, 50 out), was judged
        // weak, and "large" answered again (100 in, 60 out, a follow-up).
        let mut escalation = row("a", "large", 0.0028, 1.0, 100.0, 60.0);
        escalation.follow_up_cost_usd = 0.0028;
        escalation.follow_up_prompt_tokens = 100.0;
        escalation.follow_up_completion_tokens = 60.0;
        let rows = [row("a", "small", 0.00003, 1.0, 100.0, 50.0), escalation];
        let r = report(&rows, Some(strong.clone()), &[], hour());
        // The counterfactual is the one request on "large": (10·100 + 30·50)/1e6.
        assert!((r.total.counterfactual_usd - 0.0025).abs() < 1e-12, "{r:?}");
        assert!((r.total.cost_usd - 0.00283).abs() < 1e-12);
        // Escalating cost more than the large model alone would have: negative savings, shown as such.
        assert!(r.total.savings_usd < 0.0);
        // Without a known strongest model, spend is its own counterfactual, once.
        let r = report(&rows, None, &[], hour());
        assert!(
            (r.total.counterfactual_usd - 0.00003).abs() < 1e-12,
            "{r:?}"
        );
    }

    #[test]
    fn requests_once_attempts_apart_and_the_large_share() {
        // Three client requests: two on small (one of them first failed at
        // another worker: two attempts), one on large.
        let mut small = row("a", "small", 0.0002, 2.0, 100.0, 50.0);
        small.attempts = 3.0;
        let rows = [small, row("b", "large", 0.01, 1.0, 100.0, 50.0)];
        let r = report(&rows, None, &["large".to_string()], hour());
        assert_eq!((r.total.requests, r.total.attempts), (3.0, 4.0));
        assert_eq!(r.total.large_requests, 1.0);
        assert!((r.total.large_share - 1.0 / 3.0).abs() < 1e-12);
        assert!((r.by_model[1].cost_per_request_usd - 0.0001).abs() < 1e-12);
        // Nothing on a large model is 0.0, not -0.0.
        let r = report(&rows[..1], None, &["large".to_string()], hour());
        assert!(r.total.large_share.is_sign_positive() && r.total.large_share == 0.0);
    }

    #[test]
    fn every_period_of_the_range_is_there_in_order() {
        let hour_ms = Period::Hour.ms();
        // 10:20 on some day: the last 3 hours are 08:00, 09:00 and 10:00.
        let now = 1_000 * 86_400_000 + 10 * hour_ms + 20 * 60_000;
        let range = ReportRange::last(3, Period::Hour, now);
        assert_eq!(range.from_ms, now - 2 * hour_ms - 20 * 60_000);
        let mut late = row("a", "small", 0.5, 1.0, 1.0, 1.0);
        late.period_start_ms = range.from_ms + 2 * hour_ms;
        let r = report(&[late], None, &[], range);
        let starts: Vec<u64> = r.by_period.iter().map(|p| p.start_ms).collect();
        assert_eq!(
            starts,
            [0, 1, 2].map(|i| range.from_ms + i * hour_ms).to_vec()
        );
        assert_eq!(
            r.by_period
                .iter()
                .map(|p| p.line.cost_usd)
                .collect::<Vec<_>>(),
            [0.0, 0.0, 0.5]
        );
        assert_eq!(r.by_period[2].line.name, period_name(late_start(range)));
        assert!(r.by_period[0].line.name.ends_with("T08:00:00Z"));
        // Days: 48 hours back covers two days, today included.
        let days = ReportRange::hours(48, Period::Day, now);
        assert_eq!((days.periods, days.from_ms), (2, 999 * 86_400_000));
    }

    fn late_start(range: ReportRange) -> u64 {
        range.from_ms + 2 * Period::Hour.ms()
    }
}
