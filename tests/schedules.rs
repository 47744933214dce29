//! Checkpoint schedules and the memory planner, checked against independent computations: a brute-force
//! dynamic program for the optimal replay count, the binomial closed form recomputed here, the k-ary
//! closed forms for T = k^d, and a symbolic machine that validates every emitted action.

#![allow(clippy::needless_range_loop)] // the DP tables read best indexed by (T, s)

use metagrad::error::Error;
use metagrad::replay::plan::{peak_bytes, plan, plan_kary, Plan, StateBytes};
use metagrad::replay::schedule::{
    kary_peak_slots, kary_replayed_steps, kary_segment_sizes, revolve_replayed_steps, simulate, Action, Schedule, ScheduleKind,
    ScheduleStats, Simulator,
};

const INF: u64 = u64::MAX / 4;

/// F[T][s]: the fewest replayed steps to reverse T steps with s slots, s_0 in the working state, by brute
/// force over the first checkpoint position m: advance m steps, solve [m, T) with s − 1 slots (s_0 keeps
/// one), then [0, m) with s slots.
fn optimal_dp(max_t: usize, max_s: usize) -> Vec<Vec<u64>> {
    let mut f = vec![vec![INF; max_s + 1]; max_t + 1];
    for s in 0..=max_s {
        f[1][s] = 0;
    }
    for t in 2..=max_t {
        for s in 1..=max_s {
            f[t][s] = (1..t).map(|m| m as u64 + f[t - m][s - 1] + f[m][s]).min().unwrap();
        }
    }
    f
}

/// C(n, k) exactly, by the multiplicative formula (small arguments only).
fn choose(n: u128, k: u128) -> u128 {
    if k > n {
        return 0;
    }
    (0..k.min(n - k)).fold(1, |c, i| c * (n - i) / (i + 1))
}

/// t(T, s) = r·T − C(s + r, s + 1) with r found by a linear search (independent of the library's search).
fn binomial_formula(t: u64, s: u64) -> u64 {
    let mut r = 0u128;
    while choose(s as u128 + r, s as u128) < t as u128 {
        r += 1;
    }
    (r * t as u128 - choose(s as u128 + r, s as u128 + 1)) as u64
}

fn ceil_log(t: usize, k: usize) -> usize {
    let (mut d, mut p) = (0, 1usize);
    while p < t {
        p *= k;
        d += 1;
    }
    d
}

fn sim(kind: ScheduleKind, t: usize) -> (Schedule, ScheduleStats) {
    let schedule = Schedule::new(kind, t).unwrap();
    let stats = simulate(&schedule).unwrap_or_else(|e| panic!("{kind:?}, T = {t}: {e}"));
    assert_eq!(stats.reversed, t, "{kind:?}, T = {t}");
    assert_eq!(stats.slots_used, schedule.slots(), "{kind:?}, T = {t}: slots");
    assert_eq!(stats.replayed_steps, schedule.expected_replayed_steps(), "{kind:?}, T = {t}: replayed");
    (schedule, stats)
}

fn actions(schedule: &Schedule) -> Vec<Action> {
    let mut out = Vec::new();
    schedule
        .for_each(&mut |a| {
            out.push(a);
            Ok(())
        })
        .unwrap();
    out
}

#[test]
fn revolve_formula_known_values() {
    for (t, s, want) in [(1, 1, 0), (2, 1, 1), (3, 1, 3), (3, 2, 2), (4, 2, 4), (6, 2, 8), (10, 3, 15)] {
        assert_eq!(revolve_replayed_steps(t, s).unwrap(), want, "t({t}, {s})");
        assert_eq!(binomial_formula(t as u64, s as u64), want, "test formula t({t}, {s})");
    }
}

#[test]
fn revolve_formula_matches_brute_force_dp() {
    let f = optimal_dp(119, 7);
    for t in 1..120 {
        for s in 1..=6 {
            assert_eq!(revolve_replayed_steps(t, s).unwrap(), f[t][s], "T = {t}, s = {s}");
        }
    }
}

#[test]
fn revolve_schedule_achieves_the_optimum() {
    let f = optimal_dp(200, 12);
    for t in 1..=200 {
        for s in 1..=12 {
            let (schedule, stats) = sim(ScheduleKind::Revolve { slots: s }, t);
            assert_eq!(stats.replayed_steps, f[t][s], "T = {t}, s = {s}");
            assert_eq!(schedule.slots(), s.min(t - 1), "T = {t}, s = {s}");
        }
    }
    for (t, s) in [(1000, 3), (4096, 5), (9999, 2), (30000, 1), (5000, 4999), (5000, 100_000)] {
        let (_, stats) = sim(ScheduleKind::Revolve { slots: s }, t);
        assert_eq!(stats.replayed_steps, binomial_formula(t as u64, s as u64), "T = {t}, s = {s}");
    }
}

#[test]
fn revolve_large_t_counts() {
    let (_, stats) = sim(ScheduleKind::Revolve { slots: 13 }, 100_000);
    assert_eq!(stats.replayed_steps, binomial_formula(100_000, 13));
    assert_eq!(stats.slots_used, 13);
    // Formula only: far too long to emit, still exact and instant.
    for (t, s) in [(1_000_000_000, 13), (1 << 40, 40), (123_456_789, 2)] {
        assert_eq!(revolve_replayed_steps(t, s).unwrap(), binomial_formula(t as u64, s as u64), "T = {t}, s = {s}");
    }
    // s = 1 needs r = T − 1: t = T(T − 1)/2.
    assert_eq!(revolve_replayed_steps(1 << 30, 1).unwrap(), (1u64 << 30) * ((1 << 30) - 1) / 2);
}

#[test]
fn revolve_with_enough_slots_is_store_all() {
    for t in 1..=60 {
        let store_all = actions(&Schedule::new(ScheduleKind::StoreAll, t).unwrap());
        for s in [t.saturating_sub(1).max(1), t, 3 * t] {
            let revolve = Schedule::new(ScheduleKind::Revolve { slots: s }, t).unwrap();
            assert_eq!(actions(&revolve), store_all, "T = {t}, s = {s}");
        }
    }
}

#[test]
fn revolve_slots_strictly_help_until_store_all() {
    for t in 2..=400 {
        for s in 1..t - 1 {
            assert!(revolve_replayed_steps(t, s + 1).unwrap() < revolve_replayed_steps(t, s).unwrap(), "T = {t}, s = {s}");
        }
        assert_eq!(revolve_replayed_steps(t, t - 1).unwrap(), t as u64 - 1);
    }
}

#[test]
fn store_all_counts() {
    for t in 1..=300 {
        let (schedule, stats) = sim(ScheduleKind::StoreAll, t);
        let n = t as u64 - 1;
        assert_eq!((schedule.slots(), stats.replayed_steps, stats.stores, stats.restores), (t - 1, n, n, n));
    }
}

#[test]
fn kary_segment_sizes_rule() {
    for n in 1..=200 {
        for k in 2..=12 {
            let sizes = kary_segment_sizes(n, k).unwrap();
            assert_eq!(sizes.len(), k.min(n));
            assert_eq!(sizes.iter().sum::<usize>(), n);
            assert!(sizes.windows(2).all(|w| w[0] <= w[1] && w[1] - w[0] <= 1), "{n}, {k}: {sizes:?}");
            assert!(sizes[0] >= 1);
        }
    }
    assert_eq!(kary_segment_sizes(10, 4).unwrap(), vec![2, 2, 3, 3]);
}

#[test]
fn kary_simulation_matches_counters() {
    for t in 1..=300 {
        for k in 2..=9 {
            let (schedule, _) = sim(ScheduleKind::KAry { k }, t);
            assert_eq!(schedule.expected_replayed_steps(), kary_replayed_steps(t, k).unwrap());
            assert_eq!(schedule.slots(), kary_peak_slots(t, k).unwrap());
        }
    }
    for t in [1000, 4095, 4097, 10_007, 100_000] {
        for k in [2, 3, 4, 8, 16] {
            sim(ScheduleKind::KAry { k }, t);
        }
    }
}

#[test]
fn kary_closed_form_for_powers_of_k() {
    for k in 2..=7usize {
        let mut t = 1usize;
        for d in 0..=30usize {
            if t > 1 << 22 {
                break;
            }
            // Each of the d levels replays T·(1 − 1/k) steps and holds k − 1 more states.
            let replayed = if d == 0 { 0 } else { (d * (k - 1) * t / k) as u64 };
            assert_eq!(kary_replayed_steps(t, k).unwrap(), replayed, "k = {k}, d = {d}");
            assert_eq!(kary_peak_slots(t, k).unwrap(), d * (k - 1), "k = {k}, d = {d}");
            if t <= 50_000 {
                let (_, stats) = sim(ScheduleKind::KAry { k }, t);
                assert_eq!(stats.replayed_steps, replayed, "k = {k}, d = {d}");
            }
            t *= k;
        }
    }
}

#[test]
fn kary_peak_is_logarithmic() {
    for k in 2..=10 {
        for t in (1..=5000).chain([65_535, 65_537, 1 << 20, 999_999_937]) {
            let peak = kary_peak_slots(t, k).unwrap();
            let levels = ceil_log(t, k);
            assert!(peak <= k * levels + 1, "k = {k}, T = {t}: {peak}");
            assert!(peak <= (k - 1) * levels, "k = {k}, T = {t}: {peak}");
        }
    }
}

#[test]
fn kary_million_steps_streams() {
    // 10^6 steps: the emitter keeps O(slots + depth) state and simulate only counts.
    let (_, stats) = sim(ScheduleKind::KAry { k: 2 }, 1_000_000);
    assert_eq!(stats.slots_used, kary_peak_slots(1_000_000, 2).unwrap());
}

/// No Restore of a state the working state already holds, and every stored state is read back.
#[test]
fn no_pointless_copies() {
    for t in 1..=120 {
        for kind in [ScheduleKind::StoreAll, ScheduleKind::KAry { k: 2 }, ScheduleKind::KAry { k: 5 }, ScheduleKind::Revolve { slots: 3 }] {
            let mut working = Some(0);
            let mut restored = vec![];
            for a in actions(&Schedule::new(kind, t).unwrap()) {
                match a {
                    Action::Store { slot, .. } => restored.push((slot, false)),
                    Action::Restore { slot, step } => {
                        assert_ne!(working, Some(step), "{kind:?}, T = {t}: pointless {a:?}");
                        restored.iter_mut().rev().find(|(s, _)| *s == slot).unwrap().1 = true;
                        working = Some(step);
                    }
                    Action::Advance { to, .. } => working = Some(to),
                    Action::Reverse { .. } => working = None,
                    Action::Free { .. } => {}
                }
            }
            assert!(restored.iter().all(|&(_, r)| r), "{kind:?}, T = {t}: a stored state is never restored");
        }
    }
}

#[test]
fn revolve_beats_kary_at_equal_slots() {
    for k in 2..=9usize {
        for t in 1..=2000 {
            let slots = kary_peak_slots(t, k).unwrap();
            let kary = kary_replayed_steps(t, k).unwrap();
            if t == 1 {
                assert_eq!(kary, 0);
                continue;
            }
            let revolve = revolve_replayed_steps(t, slots).unwrap();
            // They tie exactly for T ≤ k² + k + 1 (an empirical boundary, stated in the module docs).
            if t <= k * k + k + 1 {
                assert_eq!(revolve, kary, "k = {k}, T = {t}");
            } else {
                assert!(revolve < kary, "k = {k}, T = {t}: revolve {revolve} vs kary {kary}");
            }
        }
    }
    // The example's rows, measured.
    for t in [100, 1000, 4096, 100_000] {
        for k in [2, 4, 8] {
            let (_, kary) = sim(ScheduleKind::KAry { k }, t);
            let (_, revolve) = sim(ScheduleKind::Revolve { slots: kary.slots_used }, t);
            assert_eq!(revolve.slots_used, kary.slots_used);
            assert!(revolve.replayed_steps < kary.replayed_steps, "k = {k}, T = {t}");
        }
    }
}

fn is_invalid(r: metagrad::error::Result<impl std::fmt::Debug>, needles: &[&str]) {
    match r {
        Err(Error::Invalid { msg, .. }) => {
            for n in needles {
                assert!(msg.contains(n), "{msg:?} lacks {n:?}");
            }
        }
        other => panic!("expected Error::Invalid, got {other:?}"),
    }
}

#[test]
fn bad_arguments_are_errors() {
    is_invalid(Schedule::new(ScheduleKind::StoreAll, 0), &["T = 0"]);
    is_invalid(Schedule::new(ScheduleKind::KAry { k: 1 }, 10), &["k = 1", "T = 10"]);
    is_invalid(Schedule::new(ScheduleKind::KAry { k: 0 }, 10), &["k = 0"]);
    is_invalid(Schedule::new(ScheduleKind::Revolve { slots: 0 }, 10), &["0 slots", "T = 10"]);
    is_invalid(kary_replayed_steps(0, 2), &["T = 0"]);
    is_invalid(kary_peak_slots(5, 1), &["k = 1"]);
    is_invalid(kary_segment_sizes(0, 3), &["T = 0"]);
    is_invalid(revolve_replayed_steps(7, 0), &["0 slots"]);
    // Counts beyond u64 are errors, not panics or wraps.
    is_invalid(revolve_replayed_steps(usize::MAX, 1), &["overflow"]);
    is_invalid(Schedule::new(ScheduleKind::Revolve { slots: 1 }, usize::MAX), &["overflow"]);
    assert!(Schedule::new(ScheduleKind::Revolve { slots: usize::MAX }, usize::MAX).is_ok());
    assert!(Schedule::new(ScheduleKind::KAry { k: usize::MAX }, usize::MAX).is_ok());
}

#[test]
fn for_each_stops_at_the_callbacks_error() {
    let schedule = Schedule::new(ScheduleKind::KAry { k: 3 }, 50).unwrap();
    let mut calls = 0;
    let err = schedule.for_each(&mut |_| {
        calls += 1;
        if calls == 5 {
            Err(Error::Autodiff { msg: "stop".into() })
        } else {
            Ok(())
        }
    });
    assert_eq!(err, Err(Error::Autodiff { msg: "stop".into() }));
    assert_eq!(calls, 5);
}

fn run(steps: usize, slots: usize, actions: &[Action]) -> metagrad::error::Result<ScheduleStats> {
    let mut sim = Simulator::new(steps, slots);
    for &a in actions {
        sim.apply(a)?;
    }
    sim.finish()
}

#[test]
fn simulator_rejects_invalid_schedules() {
    use Action::*;
    let ok = [
        Store { slot: 0, step: 0 },
        Advance { from: 0, to: 1 },
        Reverse { step: 1 },
        Restore { slot: 0, step: 0 },
        Reverse { step: 0 },
        Free { slot: 0 },
    ];
    assert_eq!(run(2, 1, &ok).unwrap(), ScheduleStats { slots_used: 1, replayed_steps: 1, stores: 1, restores: 1, reversed: 2 });
    let bad: &[(&[Action], &str)] = &[
        (&[Store { slot: 1, step: 0 }], "out of range"),
        (&[Store { slot: 0, step: 1 }], "working state holds s_0"),
        (&[Store { slot: 0, step: 0 }, Store { slot: 0, step: 0 }], "already holds s_0"),
        (&[Restore { slot: 0, step: 0 }], "slot holds nothing"),
        (&[Store { slot: 0, step: 0 }, Restore { slot: 0, step: 1 }], "slot holds s_0"),
        (&[Advance { from: 1, to: 2 }], "working state holds s_0"),
        (&[Advance { from: 0, to: 0 }], "from < to < T"),
        (&[Advance { from: 0, to: 2 }], "from < to < T"),
        (&[Reverse { step: 0 }], "next step to reverse is 1"),
        (&[Advance { from: 0, to: 1 }, Reverse { step: 1 }, Reverse { step: 0 }], "working state holds nothing"),
        (&[Advance { from: 0, to: 1 }, Reverse { step: 1 }, Advance { from: 1, to: 2 }], "working state holds nothing"),
        (&[Free { slot: 0 }], "already empty"),
        (&[Free { slot: 7 }], "out of range"),
        (&[Advance { from: 0, to: 1 }, Reverse { step: 1 }], "reversing 1 of T = 2"),
        (&ok[..5], ""), // valid: a missing final Free is allowed
    ];
    for (actions, needle) in bad {
        match run(2, 1, actions) {
            Ok(_) if needle.is_empty() => {}
            Err(Error::Invalid { op: "simulate", msg }) if !needle.is_empty() => {
                assert!(msg.contains(needle), "{actions:?}: {msg:?} lacks {needle:?}")
            }
            other => panic!("{actions:?}: {other:?}"),
        }
    }
    // Past the end.
    let mut sim = Simulator::new(1, 0);
    sim.apply(Reverse { step: 0 }).unwrap();
    assert!(sim.apply(Reverse { step: 0 }).is_err());
}

/// Xorshift64: a fixed pseudo-random stream for the fuzz tests (no dependencies).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

#[test]
fn simulator_never_panics_on_random_actions() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut accepted = 0;
    for _ in 0..20_000 {
        let (steps, slots) = (rng.below(4) + 1, rng.below(3));
        let mut sim = Simulator::new(steps, slots);
        for _ in 0..12 {
            let (a, b) = (rng.below(4), rng.below(4));
            let action = match rng.below(5) {
                0 => Action::Store { slot: a, step: b },
                1 => Action::Restore { slot: a, step: b },
                2 => Action::Advance { from: a, to: b },
                3 => Action::Reverse { step: a },
                _ => Action::Free { slot: a },
            };
            if sim.apply(action).is_err() {
                break;
            }
            accepted += 1;
        }
        let _ = sim.finish();
    }
    assert!(accepted > 500, "{accepted}");
}

/// Valid schedules with one action corrupted, dropped or duplicated: an error or a still-valid schedule,
/// never a panic; a corrupted Reverse or Advance is always caught.
#[test]
fn simulator_catches_mutated_schedules() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut caught = 0;
    for _ in 0..3000 {
        let t = rng.below(40) + 1;
        let kind = match rng.below(3) {
            0 => ScheduleKind::KAry { k: rng.below(4) + 2 },
            1 => ScheduleKind::Revolve { slots: rng.below(5) + 1 },
            _ => ScheduleKind::StoreAll,
        };
        let schedule = Schedule::new(kind, t).unwrap();
        let mut list = actions(&schedule);
        let i = rng.below(list.len());
        let d = rng.below(3) + 1;
        let must_fail = matches!(list[i], Action::Reverse { .. } | Action::Advance { .. });
        match rng.below(3) {
            0 => {
                list[i] = match list[i] {
                    Action::Store { slot, step } => Action::Store { slot: slot + d, step },
                    Action::Restore { slot, step } => Action::Restore { slot, step: step + d },
                    Action::Advance { from, to } => Action::Advance { from, to: to + d },
                    Action::Reverse { step } => Action::Reverse { step: step + d },
                    Action::Free { slot } => Action::Free { slot: slot + d },
                }
            }
            1 => {
                list.remove(i);
            }
            _ => list.insert(i, list[i]),
        }
        let result = run(t, schedule.slots(), &list);
        if must_fail {
            assert!(result.is_err(), "{kind:?}, T = {t}, action {i}");
        }
        caught += usize::from(result.is_err());
    }
    assert!(caught > 2000, "{caught}");
}

const MIB: u64 = 1 << 20;
const SIZES: StateBytes = StateBytes { state: 4 * MIB, adjoint: 6 * MIB };

#[test]
fn plan_boundary_is_exact() {
    for t in [1, 2, 3, 10, 1000] {
        let slots = if t == 1 { 0 } else { 1 };
        let minimum = (slots + 1) * 4 * MIB + 6 * MIB;
        let p = plan(minimum, SIZES, t).unwrap();
        assert_eq!(p.peak_bytes, minimum);
        assert_eq!(p.slots, slots as usize);
        match plan(minimum - 1, SIZES, t) {
            Err(Error::OutOfMemory { op: "plan", msg }) => {
                assert!(msg.contains(&minimum.to_string()), "{msg}")
            }
            other => panic!("T = {t}: {other:?}"),
        }
    }
}

#[test]
fn plan_picks_store_all_when_everything_fits() {
    for t in 1..=50 {
        let all = (t as u64) * 4 * MIB + 6 * MIB; // T states (T − 1 slots + working) + adjoint
        let p = plan(all, SIZES, t).unwrap();
        assert_eq!((p.kind, p.slots, p.expected_replayed_steps, p.peak_bytes), (ScheduleKind::StoreAll, t - 1, t as u64 - 1, all));
        assert_eq!(plan(u64::MAX, SIZES, t).unwrap().kind, ScheduleKind::StoreAll);
        if t > 2 {
            let p = plan(all - 1, SIZES, t).unwrap();
            assert_eq!((p.kind, p.slots), (ScheduleKind::Revolve { slots: t - 2 }, t - 2));
        }
    }
    let free_states = StateBytes { state: 0, adjoint: 10 };
    assert_eq!(plan(10, free_states, 1000).unwrap().kind, ScheduleKind::StoreAll);
}

#[test]
fn plan_is_monotone_in_budget_and_fits() {
    let t = 10_000;
    let f = |s| revolve_replayed_steps(t, s).unwrap();
    let mut last = u64::MAX;
    for budget in (14 * MIB..200 * MIB).step_by(MIB as usize / 3) {
        let p = plan(budget, SIZES, t).unwrap();
        assert!(p.peak_bytes <= budget);
        assert!(p.expected_replayed_steps <= last, "budget {budget}");
        last = p.expected_replayed_steps;
        // Fewest replays: one more slot would not fit.
        assert_eq!(p.expected_replayed_steps, f(p.slots));
        assert!(peak_bytes(p.slots + 1, SIZES).unwrap() > budget);
        let schedule = p.schedule().unwrap();
        assert_eq!(Plan::for_schedule(&schedule, SIZES).unwrap(), p);
    }
}

#[test]
fn plan_display_and_kary() {
    let p = plan(64 * MIB, SIZES, 100_000).unwrap();
    assert_eq!(p.kind, ScheduleKind::Revolve { slots: 13 });
    let text = p.to_string();
    assert!(text.starts_with("revolve: T = 100000, 13 slots, "), "{text}");
    assert!(text.ends_with("peak 62.0 MiB"), "{text}");
    let k = plan_kary(4, SIZES, 100_000).unwrap();
    assert_eq!(k.slots, kary_peak_slots(100_000, 4).unwrap());
    assert!(k.to_string().starts_with("kary (k = 4): "));
    assert!(matches!(plan(1 << 40, SIZES, 0), Err(Error::Invalid { .. })));
    assert!(peak_bytes(usize::MAX, SIZES).is_err());
}

mod tiered {
    use metagrad::replay::plan::{plan, plan_tiered, StateBytes, Tiers};
    use metagrad::replay::schedule::ScheduleKind;

    const SIZES: StateBytes = StateBytes { state: 1000, adjoint: 2000 };

    #[test]
    fn no_slow_memory_is_the_single_tier_plan() {
        let t = plan_tiered(Tiers { fast_bytes: 10_000, slow_bytes: 0, copy_steps: 1.0 }, SIZES, 500).unwrap();
        assert_eq!(t.plan, plan(10_000, SIZES, 500).unwrap());
        assert_eq!((t.slow_slots, t.slow_copies), (0, 0));
        assert_eq!(t.cost_steps, t.plan.expected_replayed_steps as f64);
    }

    #[test]
    fn free_copies_use_all_slow_memory_and_costly_copies_none() {
        // Fast memory: 7 slots; slow: 20 more. With free copies more slots always replay less.
        let free = plan_tiered(Tiers { fast_bytes: 10_000, slow_bytes: 20_000, copy_steps: 0.0 }, SIZES, 500).unwrap();
        assert_eq!((free.fast_slots, free.slow_slots), (7, 20));
        assert!(free.plan.expected_replayed_steps < plan(10_000, SIZES, 500).unwrap().expected_replayed_steps);
        let dear = plan_tiered(Tiers { fast_bytes: 10_000, slow_bytes: 20_000, copy_steps: 1e9 }, SIZES, 500).unwrap();
        assert_eq!(dear.slow_slots, 0);
        // Everything fits in slow memory: store-all, T − 1 slots.
        let all = plan_tiered(Tiers { fast_bytes: 10_000, slow_bytes: 10_000_000, copy_steps: 0.0 }, SIZES, 500).unwrap();
        assert_eq!(all.plan.kind, ScheduleKind::StoreAll);
    }

    #[test]
    fn store_all_traffic_is_one_store_and_one_restore_per_slow_slot() {
        // T = 5: store-all keeps s_0..s_3 in 4 slots; each is stored once and restored once. With free
        // copies it wins (4 replayed steps against revolve's 5 with 3 slots).
        let t = plan_tiered(Tiers { fast_bytes: 4_000, slow_bytes: 1_000_000, copy_steps: 0.0 }, SIZES, 5).unwrap();
        assert_eq!(t.plan.kind, ScheduleKind::StoreAll);
        assert_eq!((t.fast_slots, t.slow_slots, t.slow_copies), (1, 3, 6));
        assert_eq!(t.cost_steps, 4.0);
    }

    #[test]
    fn a_billion_steps_plan_from_the_recursion() {
        // Emitting each candidate schedule would take minutes at T = 10⁹; the counts come from revolve's
        // recursion. Slow memory for up to 2000 more slots.
        let sizes = StateBytes { state: 1000, adjoint: 1000 };
        for (slow, copy) in [(2_000_000, 0.1), (2_000_000, 0.0), (50_000, 2.0), (2_000_000, 1e6)] {
            let t = plan_tiered(Tiers { fast_bytes: 20_000, slow_bytes: slow, copy_steps: copy }, sizes, 1_000_000_000).unwrap();
            let single = plan(20_000, sizes, 1_000_000_000).unwrap();
            assert!(t.cost_steps <= single.expected_replayed_steps as f64, "{t} vs {single}");
            assert_eq!(t.fast_slots + t.slow_slots, t.plan.slots);
            // Every stored slot is stored once and restored at least once.
            assert!(t.slow_copies >= 2 * t.slow_slots as u64, "{t}");
        }
        // Millions of slots at T = 10⁹ are too many to count quickly: an error that says so.
        let e = plan_tiered(Tiers { fast_bytes: 20_000, slow_bytes: 100_000_000, copy_steps: 0.0 }, sizes, 1_000_000_000).unwrap_err();
        assert!(e.to_string().contains("fewer slow bytes"), "{e}");
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(plan_tiered(Tiers { fast_bytes: 10_000, slow_bytes: 0, copy_steps: f64::NAN }, SIZES, 10).is_err());
        let e = plan_tiered(Tiers { fast_bytes: 100, slow_bytes: 1 << 30, copy_steps: 1.0 }, SIZES, 10).unwrap_err();
        assert!(e.to_string().contains("at least"), "{e}");
    }
}
