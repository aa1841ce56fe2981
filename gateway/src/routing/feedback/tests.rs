//! Unit tests of the feedback memory: locality, scopes, bounds, eviction, the stored form.

use super::*;

const SPACE: &str = "fast:test";

/// A unit point along axis `i` of `dim`, tilted towards axis `j` by `t`.
fn point(dim: usize, i: usize, j: usize, t: f32) -> PromptPoint {
    let mut v = vec![0.0f32; dim];
    v[i] = 1.0 - t;
    v[j] += t;
    PromptPoint::new(&v, None).unwrap()
}

fn entry(
    key: &str,
    scope: Scope,
    source: Option<&str>,
    score: f32,
    base: f32,
    p: PromptPoint,
) -> FeedbackEntry {
    FeedbackEntry {
        key: key.into(),
        scope,
        source: source.map(String::from),
        model: "m".into(),
        score,
        base,
        space: SPACE.into(),
        embedding: Some(p.clone()),
        point: p,
        at_ms: 1_000,
    }
}

fn memory() -> FeedbackMemory {
    FeedbackMemory::new(FeedbackMemoryConfig::default())
}

#[test]
fn points_are_centred_unit_vectors_and_cosines_match() {
    let centre = [1.0, 1.0, 0.0];
    let a = PromptPoint::new(&[2.0, 1.0, 0.0], Some(&centre)).unwrap();
    let b = PromptPoint::new(&[1.0, 2.0, 0.0], Some(&centre)).unwrap();
    // Centred: (1,0,0) and (0,1,0): orthogonal, though the raw rows are close.
    assert!(a.cosine(&b).abs() < 1e-3, "{}", a.cosine(&b));
    assert!((a.cosine(&a) - 1.0).abs() < 2e-2);
    assert!(
        PromptPoint::new(&[1.0, 1.0, 0.0], Some(&centre)).is_none(),
        "the centre itself has no direction"
    );
}

#[test]
fn scores_move_the_prompt_and_its_neighbours_only() {
    let m = memory();
    let anon = None;
    for i in 0..5 {
        m.insert(entry(
            &format!("r{i}"),
            Scope::Tenant(None),
            None,
            0.0,
            0.8,
            point(8, 0, 1, 0.0),
        ));
    }
    let same = m
        .shift("m", SPACE, &point(8, 0, 1, 0.0), &anon, 10.0, 0)
        .unwrap();
    // Five scores of 0 against a prediction of 0.8, worth 10 scores: -0.8·5/15.
    assert!((same.delta + 0.8 * 5.0 / 15.0).abs() < 0.01, "{same:?}");
    let near = m
        .shift("m", SPACE, &point(8, 0, 1, 0.2), &anon, 10.0, 0)
        .unwrap();
    assert!(near.delta < 0.0 && near.delta > same.delta, "{near:?}");
    assert!(
        m.shift("m", SPACE, &point(8, 2, 3, 0.0), &anon, 10.0, 0)
            .is_none(),
        "an unrelated prompt"
    );
    assert!(
        m.shift("other", SPACE, &point(8, 0, 1, 0.0), &anon, 10.0, 0)
            .is_none(),
        "another model"
    );
    assert!(
        m.shift("m", "full:other", &point(8, 0, 1, 0.0), &anon, 10.0, 0)
            .is_none(),
        "another space"
    );
    assert!(
        m.shift("m", SPACE, &point(8, 0, 1, 0.0), &anon, 10.0, 2_000)
            .is_none(),
        "too old"
    );
}

#[test]
fn a_tenant_moves_only_its_own_routing_unless_trusted() {
    let m = memory();
    let (a, b) = (Some("a".to_string()), Some("b".to_string()));
    m.insert(entry(
        "b1",
        Scope::Tenant(b.clone()),
        Some("b"),
        0.0,
        0.8,
        point(8, 0, 1, 0.0),
    ));
    let p = point(8, 0, 1, 0.0);
    assert!(
        m.shift("m", SPACE, &p, &a, 10.0, 0).is_none(),
        "b's feedback does not reach a"
    );
    assert!(m.shift("m", SPACE, &p, &None, 10.0, 0).is_none());
    assert!(m.shift("m", SPACE, &p, &b, 10.0, 0).is_some());
    m.insert(entry(
        "t1",
        Scope::Global,
        Some("trusted"),
        1.0,
        0.5,
        point(8, 0, 1, 0.0),
    ));
    let for_a = m.shift("m", SPACE, &p, &a, 10.0, 0).unwrap();
    assert!(for_a.delta > 0.0 && for_a.exemplars == 1, "{for_a:?}");
}

#[test]
fn one_tenant_and_one_burst_move_a_model_a_bounded_amount() {
    let m = memory();
    let p = point(8, 0, 1, 0.0);
    for i in 0..500 {
        m.insert(entry(
            &format!("r{i}"),
            Scope::Global,
            Some("mallory"),
            0.0,
            0.8,
            point(8, 0, 1, 0.0),
        ));
    }
    let s = m.shift("m", SPACE, &p, &None, 10.0, 0).unwrap();
    // In another tenant's routing, 500 scores of one tenant weigh as 5:
    // 0.8·5/15, not 0.8·500/510.
    assert!((s.delta + 0.8 * 5.0 / 15.0).abs() < 0.01, "{s:?}");
    assert_eq!(s.exemplars, 500);
    // With no prior weight at all, the cap on the shift still holds.
    let capped = m.shift("m", SPACE, &p, &None, 0.0, 0).unwrap();
    assert!((capped.delta + 0.3).abs() < 1e-9, "{capped:?}");
    // Mallory's own routing takes all of her feedback.
    let own = m
        .shift("m", SPACE, &p, &Some("mallory".into()), 10.0, 0)
        .unwrap();
    assert!((own.delta + 0.8 * 500.0 / 510.0).abs() < 0.01, "{own:?}");
}

#[test]
fn a_rescore_replaces_and_the_oldest_are_evicted() {
    let m = FeedbackMemory::new(FeedbackMemoryConfig {
        entries: 3,
        ..FeedbackMemoryConfig::default()
    });
    let p = point(8, 0, 1, 0.0);
    m.insert(entry("a", Scope::Global, None, 0.0, 0.5, p.clone()));
    m.insert(entry("a", Scope::Global, None, 1.0, 0.5, p.clone()));
    assert_eq!(m.len(), 1);
    assert_eq!(m.get("a").unwrap().score, 1.0);
    for k in ["b", "c", "d"] {
        m.insert(entry(k, Scope::Global, None, 1.0, 0.5, p.clone()));
    }
    assert_eq!(m.len(), 3);
    assert!(m.get("a").is_none(), "the oldest went first");
    assert!(m.get("d").is_some());
    // Steady replacement does not grow the bookkeeping without bound.
    for i in 0..10_000 {
        m.insert(entry(
            "d",
            Scope::Global,
            None,
            (i % 2) as f32,
            0.5,
            p.clone(),
        ));
    }
    assert_eq!(m.len(), 3);
    assert!(m.rows.read().unwrap().order.len() <= 2 * 16 + 1);
}

#[test]
fn removing_from_the_middle_keeps_each_exemplar_with_its_own_point() {
    let m = memory();
    let at = |i| point(8, i, (i + 1) % 8, 0.0);
    m.insert(entry("a", Scope::Global, None, 0.5, 0.5, at(0)));
    m.insert(entry("b", Scope::Global, None, 0.0, 0.5, at(2)));
    m.insert(entry("c", Scope::Global, None, 1.0, 0.5, at(4)));
    // "a" moves to another model: "c" takes its slot in m's codes.
    let mut moved = entry("a", Scope::Global, None, 0.5, 0.5, at(0));
    moved.model = "other".into();
    assert!(m.insert(moved));
    let delta = |i| m.shift("m", SPACE, &at(i), &None, 10.0, 0).map(|s| s.delta);
    assert!(delta(4).unwrap() > 0.0, "c's 1.0 is at its own point");
    assert!(delta(2).unwrap() < 0.0, "b's 0.0 is at its own point");
    assert_eq!(delta(0), None, "a left m");
    assert!(m.shift("other", SPACE, &at(0), &None, 10.0, 0).is_some());
    // A point of another dimension does not join the space.
    assert!(!m.insert(entry(
        "d",
        Scope::Global,
        None,
        1.0,
        0.5,
        point(16, 0, 1, 0.0)
    )));
}

#[test]
fn insertion_stays_bounded_with_100k_distinct_requests() {
    let m = FeedbackMemory::new(FeedbackMemoryConfig {
        entries: 1000,
        ..FeedbackMemoryConfig::default()
    });
    for i in 0..100_000 {
        m.insert(entry(
            &format!("r{i}"),
            Scope::Tenant(None),
            None,
            1.0,
            0.5,
            point(8, i % 8, (i + 1) % 8, 0.1),
        ));
    }
    assert_eq!(m.len(), 1000);
    assert!(m.get("r99999").is_some() && m.get("r0").is_none());
}

#[test]
fn the_stored_form_round_trips_and_refuses_garbage() {
    for scope in [
        Scope::Global,
        Scope::Tenant(None),
        Scope::Tenant(Some("acme".into())),
    ] {
        let e = entry(
            "t:acme\u{1f}req-1",
            scope,
            Some("acme"),
            0.25,
            0.75,
            point(384, 3, 7, 0.3),
        );
        let bytes = wire::encode(&e);
        assert_eq!(wire::decode(&bytes), Some(e));
        for cut in [0, 1, 10, bytes.len() - 1] {
            assert!(wire::decode(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(wire::decode(&longer).is_none());
    }
    assert!(wire::decode(b"\x02garbage").is_none());
    // A code of -128 (never produced by quantisation) is refused.
    let mut e = entry("k", Scope::Global, None, 0.5, 0.5, point(16, 0, 1, 0.0));
    let mut codes = e.point.codes.to_vec();
    codes[3] = i8::MIN;
    e.point.codes = codes.into();
    assert!(wire::decode(&wire::encode(&e)).is_none());
}

/// The locality target on real prompts: five scores on one prompt
/// move the prediction for its ten nearest public prompts and leave the
/// median of the rest unchanged (within 0.005). Uses the default artifact's
/// fast path and mix9's public prompts; skips without the assets or data.
#[test]
fn five_scores_move_the_ten_nearest_public_prompts_and_not_the_rest() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let data = root.join("../shared/data/routing/mix9.jsonl");
    let Ok(text) = std::fs::read_to_string(&data) else {
        eprintln!("SKIP: {} not found", data.display());
        return;
    };
    if let Err(e) = routemesh_router::encoder::AssetPaths::from_env().check() {
        eprintln!("SKIP: {e}");
        return;
    }
    let router = routemesh_router::Router::load(&root.join("router/artifacts/default")).unwrap();
    let prompts: Vec<String> = text
        .lines()
        .take(2000)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["prompt"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let emb = router.embed(&refs).unwrap();
    let space = router.space(router.path());
    let frame = space.frame.as_ref().unwrap();
    let points: Vec<PromptPoint> = emb
        .rows()
        .into_iter()
        .map(|r| PromptPoint::new(&frame.point(r).unwrap(), None).unwrap())
        .collect();
    for rated in [0, 250, 500, 1000, 1500] {
        let memory = memory();
        for i in 0..5 {
            let mut e = entry(
                &format!("r{i}"),
                Scope::Tenant(None),
                None,
                0.0,
                0.8,
                points[rated].clone(),
            );
            e.space = space.id.clone();
            memory.insert(e);
        }
        let mut by_similarity: Vec<(f64, f64)> = points
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != rated && prompts[*i] != prompts[rated])
            .map(|(_, p)| {
                let moved = memory
                    .shift("m", &space.id, p, &None, 10.0, 0)
                    .map_or(0.0, |s| s.delta);
                (points[rated].cosine(p), moved)
            })
            .collect();
        by_similarity.sort_by(|a, b| b.0.total_cmp(&a.0));
        let (nearest, rest) = by_similarity.split_at(10);
        eprintln!(
            "prompt {rated}: nearest cos {:.2}..{:.2}, moved {:.3}..{:.3}; {} of {} others moved",
            nearest[0].0,
            nearest[9].0,
            nearest[0].1,
            nearest[9].1,
            rest.iter().filter(|(_, m)| *m != 0.0).count(),
            rest.len()
        );
        assert!(
            nearest.iter().all(|(_, moved)| *moved < -1e-3),
            "prompt {rated}: the ten nearest move: {nearest:?}"
        );
        let mut rest: Vec<f64> = rest.iter().map(|(_, moved)| moved.abs()).collect();
        rest.sort_by(f64::total_cmp);
        let median = rest[rest.len() / 2];
        assert!(
            median <= 0.005,
            "prompt {rated}: median move of the rest {median}"
        );
    }
}

mod decoding {
    use super::super::wire;
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever Redis hands back (another version's record, a truncated
        /// or corrupted one), decoding never panics, and what it accepts
        /// re-encodes to the same bytes.
        #[test]
        fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Some(e) = wire::decode(&bytes) {
                prop_assert_eq!(wire::encode(&e), bytes);
            }
        }

        /// A valid record with one byte flipped is refused or still valid; never a panic.
        #[test]
        fn flipped_bytes_are_refused_or_valid(at in 0usize..200, bit in 0u8..8, tenant in "[a-z]{0,12}") {
            let e = entry("k", Scope::Tenant(Some(tenant)), Some("src"), 0.5, 0.5, point(128, 1, 2, 0.2));
            let mut bytes = wire::encode(&e);
            let i = at % bytes.len();
            bytes[i] ^= 1 << bit;
            if let Some(d) = wire::decode(&bytes) {
                prop_assert!((0.0..=1.0).contains(&d.score) && d.point.scale > 0.0);
            }
        }
    }
}

#[test]
fn the_int8_dot_product_is_exact_at_the_extremes() {
    let a: Vec<i8> = (0..131)
        .map(|i| if i % 3 == 0 { -127 } else { 127 })
        .collect();
    let b: Vec<i8> = (0..131)
        .map(|i| if i % 2 == 0 { 127 } else { -127 })
        .collect();
    let want: i32 = a
        .iter()
        .zip(&b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum();
    assert_eq!(super::dot_i8(&a, &b), want);
    assert_eq!(super::dot_i8(&a, &a), 131 * 127 * 127);
    // The CPU's fastest form (AVX2 here, when present) agrees.
    let best = super::best_dot();
    assert_eq!(best(&a, &b), want);
    assert_eq!(best(&a[..16], &b[..16]), super::dot_i8(&a[..16], &b[..16]));
}

#[test]
fn every_change_to_a_bucket_gets_a_new_change_number_and_a_repeat_none() {
    let m = FeedbackMemory::new(FeedbackMemoryConfig {
        entries: 3,
        ..FeedbackMemoryConfig::default()
    });
    let p = point(8, 0, 1, 0.0);
    let on = |key: &str, model: &str| {
        let mut e = entry(key, Scope::Global, None, 1.0, 0.5, p.clone());
        e.model = model.into();
        m.insert(e)
    };
    on("x1", "x");
    on("x2", "x");
    on("a1", "a");
    on("a2", "a"); // evicts x1: x changes
    let after_eviction = m.changed("x", SPACE).unwrap().0;
    on("x3", "x");
    let after_insert = m.changed("x", SPACE).unwrap().0;
    assert_ne!(
        after_eviction, after_insert,
        "an insert right after an eviction is a change"
    );
    // The same record again (a replica reading back its own write) is not.
    let again = m.get("x3").unwrap();
    assert!(m.insert((*again).clone()));
    assert_eq!(m.changed("x", SPACE).unwrap().0, after_insert);
}

#[test]
fn a_record_whose_scale_is_not_a_unit_vectors_is_refused() {
    let mut e = entry("k", Scope::Global, None, 0.5, 0.5, point(16, 0, 1, 0.0));
    e.point.scale = 1.0;
    assert!(wire::decode(&wire::encode(&e)).is_none());
}
