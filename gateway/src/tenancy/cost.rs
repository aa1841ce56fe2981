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
    pub requests: f64,
    pub cost_usd: f64,
    pub counterfactual_usd: f64,
    pub savings_usd: f64,
    /// savings / counterfactual, in [0, 1] (0 when nothing was spent).
    pub savings_share: f64,
    pub cost_per_request_usd: f64,
    pub prompt_tokens: f64,
    pub completion_tokens: f64,
}

impl Line {
    fn add(&mut self, row: &SpendRow, counterfactual: f64) {
        self.requests += row.requests;
        self.cost_usd += row.cost_usd;
        self.counterfactual_usd += counterfactual;
        self.prompt_tokens += row.prompt_tokens;
        self.completion_tokens += row.completion_tokens;
    }

    fn finish(mut self) -> Self {
        self.savings_usd = self.counterfactual_usd - self.cost_usd;
        self.savings_share = if self.counterfactual_usd > 0.0 {
            self.savings_usd / self.counterfactual_usd
        } else {
            0.0
        };
        self.cost_per_request_usd = if self.requests > 0.0 {
            self.cost_usd / self.requests
        } else {
            0.0
        };
        self
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CostReport {
    pub from_ms: u64,
    pub to_ms: u64,
    pub counterfactual: Option<Counterfactual>,
    pub total: Line,
    pub by_tenant: Vec<Line>,
    pub by_model: Vec<Line>,
    /// Per hour (or day), for charts.
    pub by_period: Vec<(u64, Line)>,
}

pub fn report(
    rows: &[SpendRow],
    counterfactual: Option<Counterfactual>,
    from_ms: u64,
    to_ms: u64,
) -> CostReport {
    use std::collections::BTreeMap;
    let mut total = Line {
        name: "total".into(),
        ..Line::default()
    };
    let mut tenants: BTreeMap<&str, Line> = BTreeMap::new();
    let mut models: BTreeMap<&str, Line> = BTreeMap::new();
    let mut periods: BTreeMap<u64, Line> = BTreeMap::new();
    for row in rows {
        let cf = counterfactual
            .as_ref()
            .map_or(row.cost_usd - row.follow_up_cost_usd, |c| c.cost(row));
        total.add(row, cf);
        tenants
            .entry(&row.tenant)
            .or_insert_with(|| Line {
                name: row.tenant.clone(),
                ..Line::default()
            })
            .add(row, cf);
        models
            .entry(&row.model)
            .or_insert_with(|| Line {
                name: row.model.clone(),
                ..Line::default()
            })
            .add(row, cf);
        periods
            .entry(row.period_start_ms)
            .or_insert_with(|| Line {
                name: row.period_start_ms.to_string(),
                ..Line::default()
            })
            .add(row, cf);
    }
    CostReport {
        from_ms,
        to_ms,
        counterfactual,
        total: total.finish(),
        by_tenant: tenants.into_values().map(Line::finish).collect(),
        by_model: models.into_values().map(Line::finish).collect(),
        by_period: periods.into_iter().map(|(p, l)| (p, l.finish())).collect(),
    }
}

impl CostReport {
    /// A table for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let cf = self
            .counterfactual
            .as_ref()
            .map_or("(no pool prices known)".to_string(), |c| {
                format!(
                    "{} at {}/{} USD per M tokens in/out",
                    c.model, c.input_usd_per_mtok, c.output_usd_per_mtok
                )
            });
        out.push_str(&format!("Counterfactual: every request on {cf}\n\n"));
        for (title, lines) in [("TENANT", &self.by_tenant), ("MODEL", &self.by_model)] {
            out.push_str(&format!(
                "{title:<28} {:>9} {:>12} {:>15} {:>12} {:>8} {:>12}\n",
                "REQUESTS", "COST USD", "ALL-STRONGEST", "SAVED USD", "SAVED", "USD/REQ"
            ));
            for l in lines.iter().chain(std::iter::once(&self.total)) {
                out.push_str(&format!(
                    "{:<28} {:>9.0} {:>12.6} {:>15.6} {:>12.6} {:>7.1}% {:>12.2e}\n",
                    l.name,
                    l.requests,
                    l.cost_usd,
                    l.counterfactual_usd,
                    l.savings_usd,
                    l.savings_share * 100.0,
                    l.cost_per_request_usd
                ));
            }
            out.push('\n');
        }
        out
    }
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
            prompt_tokens: tin,
            completion_tokens: tout,
            follow_up_cost_usd: 0.0,
            follow_up_prompt_tokens: 0.0,
            follow_up_completion_tokens: 0.0,
        }
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
        let r = report(&rows, Some(strong), 0, 1);
        assert!((r.total.counterfactual_usd - 0.05).abs() < 1e-12);
        assert!((r.total.savings_usd - (0.05 - 0.0253)).abs() < 1e-12);
        assert!((r.by_model[1].savings_share - (0.025 - 0.0003) / 0.025).abs() < 1e-12);
        assert_eq!(r.by_model[0].savings_usd, 0.0);
        assert!(r.render().contains("TENANT"));
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
        let r = report(&rows, Some(strong.clone()), 0, 1);
        // The counterfactual is the one request on "large": (10·100 + 30·50)/1e6.
        assert!((r.total.counterfactual_usd - 0.0025).abs() < 1e-12, "{r:?}");
        assert!((r.total.cost_usd - 0.00283).abs() < 1e-12);
        // Escalating cost more than the large model alone would have: negative savings, shown as such.
        assert!(r.total.savings_usd < 0.0);
        // Without a known strongest model, spend is its own counterfactual, once.
        let r = report(&rows, None, 0, 1);
        assert!(
            (r.total.counterfactual_usd - 0.00003).abs() < 1e-12,
            "{r:?}"
        );
    }
}
