//! Text tables in route_eval.py's layout, with extra predictors as rows next to the router.

use super::{BinaryMetrics, CurveMetrics, Report};

fn opt(v: Option<f64>, none: &str) -> String {
    v.map_or_else(|| none.to_string(), |v| format!("{v:.1}"))
}

fn opt3(v: Option<f64>, none: &str) -> String {
    v.map_or_else(|| none.to_string(), |v| format!("{v:.3}"))
}

/// Text tables in the layout of route_eval.py, with extra named rows (e.g. baseline predictors) added
/// next to the router.
pub fn format_report(r: &Report, extra: &[(String, Report)]) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "rows {}  models {}", r.n, r.models.len());
    if let Some(b) = &r.binary {
        let _ = writeln!(
            o,
            "\nBinary (RouteLLM): strong {} acc {:.4} | weak {} acc {:.4}",
            b.strong, b.acc_strong, b.weak, b.acc_weak
        );
        let _ = writeln!(
            o,
            "{:24}{:>7}{:>8}{:>8}{:>8}  | 10-bin APGR",
            "", "APGR", "CPT20", "CPT50", "CPT80"
        );
        let mut rows: Vec<(String, &BinaryMetrics)> = vec![("router".into(), &b.router)];
        for (name, e) in extra {
            if let Some(eb) = &e.binary {
                rows.push((name.clone(), &eb.router));
            }
        }
        rows.push(("random".into(), &b.random));
        rows.push(("oracle".into(), &b.oracle));
        for (name, m) in rows {
            let ten = m
                .routellm_10bin
                .as_ref()
                .map_or(String::new(), |t| format!("{:.3}", t.apgr));
            let _ = writeln!(
                o,
                "{:24}{:7.3}{:>8}{:>8}{:>8}  | {ten}",
                name,
                m.apgr,
                opt(m.cpt20, "never"),
                opt(m.cpt50, "never"),
                opt(m.cpt80, "never")
            );
        }
    }
    let m = &r.multi;
    let k = 1000.0;
    let _ = writeln!(
        o,
        "\nMulti-model (RouterBench), cost in USD/1k queries, AIQ over [{:.4}, {:.4}]; cheapest {}, best {}",
        m.c_min * k,
        m.c_max * k,
        m.cheapest_model,
        m.best_model
    );
    let _ = writeln!(
        o,
        "{:40}{:>7}{:>7}{:>9}{:>8}{:>8}{:>12}",
        "", "AIQ", "q_max", "$@q_max", "q@cheap", "q@best$", "$match/best"
    );
    let mut named: Vec<(String, &CurveMetrics)> = vec![("router".into(), &m.router)];
    for (name, e) in extra {
        named.push((name.clone(), &e.multi.router));
    }
    named.push(("oracle".into(), &m.oracle));
    named.push(("random".into(), &m.random));
    named.push(("singles hull".into(), &m.singles_hull));
    for (s, v) in &m.single {
        named.push((format!("single {s}"), v));
    }
    for (name, c) in named {
        let name: String = name.chars().take(40).collect();
        let _ = writeln!(
            o,
            "{:40}{:7.3}{:7.3}{:9.4}{:>8}{:>8}{:>12}",
            name,
            c.aiq,
            c.q_max,
            c.cost_at_q_max * k,
            opt3(c.q_at_cheapest, "-"),
            opt3(c.q_at_best, "-"),
            opt3(c.cost_to_match_best, "never")
        );
    }
    o
}
