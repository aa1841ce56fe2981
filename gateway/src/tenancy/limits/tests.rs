//! Limits in memory: windows, reservations under concurrency, settlement.

use super::*;

fn tenants(t: TenantConfig) -> HashMap<String, TenantConfig> {
    HashMap::from([("t".to_string(), t)])
}

const HOLD: Duration = Duration::from_secs(60);

fn ask(tokens: u64, cost_usd: f64) -> Ask {
    Ask { tokens, cost_usd }
}

#[tokio::test]
async fn memory_limits() {
    let l = Limits::in_memory(
        &tenants(TenantConfig {
            requests_per_minute: Some(2),
            budget_usd_per_day: Some(1.0),
            ..Default::default()
        }),
        true,
    );
    let now = 10 * DAY_MS;
    let (a, b) = (
        l.admit("t", Ask::default(), HOLD, now).await,
        l.admit("t", Ask::default(), HOLD, now).await,
    );
    assert!(a.is_ok() && b.is_ok());
    assert!(matches!(
        l.admit("t", Ask::default(), HOLD, now).await,
        Err(Refusal::Over {
            limit: LimitKind::RequestsPerMinute,
            ..
        })
    ));
    let spend = l
        .admit("t", Ask::default(), HOLD, now + MINUTE_MS)
        .await
        .expect("a new minute");
    spend.charge(10, 1.5);
    drop(spend);
    assert!(matches!(
        l.admit("t", Ask::default(), HOLD, now + 2 * MINUTE_MS)
            .await,
        Err(Refusal::Over {
            limit: LimitKind::BudgetUsdPerDay,
            ..
        })
    ));
    assert!(
        l.admit("other", ask(1_000_000, 1e6), HOLD, now)
            .await
            .is_ok(),
        "tenants without limits pass"
    );
}

#[tokio::test]
async fn concurrent_requests_cannot_share_the_same_remaining_budget() {
    let l = Limits::in_memory(
        &tenants(TenantConfig {
            budget_usd_per_day: Some(0.001),
            tokens_per_minute: Some(1000),
            ..Default::default()
        }),
        true,
    );
    let now = 3 * DAY_MS;
    // A hundred requests at once, each possibly costing 0.0003 USD.
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..100 {
        match l.admit("t", ask(100, 0.0003), HOLD, now).await {
            Ok(r) => held.push(r),
            Err(e) => refused.push(e),
        }
    }
    assert_eq!(held.len(), 3, "3 x 0.0003 fit in 0.001, a fourth does not");
    let Refusal::Over { limit, detail, .. } = &refused[0] else {
        panic!("{refused:?}")
    };
    assert_eq!(*limit, LimitKind::BudgetUsdPerDay);
    assert!(detail.contains("in flight"), "{detail}");
    // Each used a third of its reservation: what was held comes back.
    for r in held.drain(..) {
        r.charge(30, 0.0001);
    }
    assert!(l.admit("t", ask(100, 0.0003), HOLD, now).await.is_ok());
    let Store::Memory(m) = &*l.store else {
        panic!("in memory")
    };
    let (_, reserved) = m.lock().map(|m| m.sizes()).unwrap_or_default();
    assert_eq!(reserved, 0, "settled reservations leave nothing behind");
}

#[tokio::test]
async fn a_request_larger_than_the_limit_says_so() {
    let l = Limits::in_memory(
        &tenants(TenantConfig {
            tokens_per_minute: Some(100),
            ..Default::default()
        }),
        true,
    );
    let Err(Refusal::Over { limit, detail, .. }) = l.admit("t", ask(500, 0.0), HOLD, 0).await
    else {
        panic!("admitted")
    };
    assert_eq!(limit, LimitKind::TokensPerMinute);
    assert!(detail.contains("lower max_tokens"), "{detail}");
}

#[tokio::test]
async fn memory_forgets_past_windows() {
    let l = Limits::in_memory(
        &tenants(TenantConfig {
            requests_per_minute: Some(100),
            tokens_per_minute: Some(100_000),
            budget_usd_per_day: Some(100.0),
            ..Default::default()
        }),
        true,
    );
    // A month of minutes, each with a request and a charge.
    for minute in 0..(30 * 24 * 60) {
        let now = minute * MINUTE_MS;
        let r = l
            .admit("t", ask(20, 0.001), HOLD, now)
            .await
            .expect("admitted");
        r.charge(10, 0.0001);
    }
    let Store::Memory(m) = &*l.store else {
        panic!("in memory")
    };
    let (counters, reserved) = m.lock().map(|m| m.sizes()).unwrap_or_default();
    assert!(
        counters <= 4 && reserved == 0,
        "{counters} counters and {reserved} reservations kept for one tenant after a month"
    );
}

#[tokio::test]
async fn a_hundred_thousand_tenants_without_limits_leave_nothing_behind() {
    // Only tenants with limits configured are counted, so the map is bounded
    // by the configuration, whatever names requests arrive with.
    let l = Limits::in_memory(
        &tenants(TenantConfig {
            requests_per_minute: Some(100),
            ..Default::default()
        }),
        true,
    );
    for n in 0..100_000u64 {
        let r = l
            .admit(&format!("tenant-{n}"), ask(20, 0.001), HOLD, n)
            .await
            .expect("no limits: admitted");
        r.charge(10, 0.0001);
    }
    let Store::Memory(m) = &*l.store else {
        panic!("in memory")
    };
    let (counters, reserved) = m.lock().map(|m| m.sizes()).unwrap_or_default();
    assert_eq!(
        (counters, reserved),
        (0, 0),
        "state kept for tenants that have no limits"
    );
}
