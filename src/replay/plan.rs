//! A memory-budget planner: the checkpoint schedule with the fewest replayed steps that fits in a budget.
//!
//! While a schedule runs, memory holds its stored states, the working state and what the backward needs
//! beside them (the adjoint `s̄` and the taped step's working memory):
//!
//! `peak_bytes = slots·state + state + adjoint`
//!
//! with `slots` as in [`crate::replay::schedule`] (the working state is not a slot). Revolve is optimal
//! for any slot count (Griewank & Walther), and its replayed steps shrink as slots grow until `T − 1`
//! slots, where it is [`ScheduleKind::StoreAll`]. So the planner fits as many slots as the budget allows,
//! uses StoreAll once `T − 1` slots fit, and revolve with that many slots otherwise. The smallest budget
//! that works is one slot (for `s_0`; none when `T = 1`) plus the working state plus the adjoint; below it
//! [`plan`] is an [`Error::OutOfMemory`] that states that minimum.

use crate::error::{Error, Result};
use crate::replay::schedule::{revolve_slot_traffic, Runs, Schedule, ScheduleKind};
use crate::Tensor;
use std::fmt;

/// Memory sizes of one training run, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateBytes {
    /// Bytes of one optimizer state `s_t` (parameters, moments, step counters, ...).
    pub state: u64,
    /// Bytes the backward needs beside the states: the adjoint `s̄` and the taped step's working memory.
    pub adjoint: u64,
}

impl StateBytes {
    /// The sizes of a run whose states look like `state` and whose metaparameters look like `meta`: the
    /// adjoint holds one state-sized s̄ and one metaparameter-sized z̄. Add the taped step's own working
    /// memory (activations of one forward, backward and backward-over-backward) to `adjoint` if it matters
    /// next to the states.
    pub fn of(state: &[Tensor], meta: &[Tensor]) -> StateBytes {
        let bytes = |ts: &[Tensor]| ts.iter().map(|t| t.size_in_bytes() as u64).sum::<u64>();
        StateBytes { state: bytes(state), adjoint: bytes(state) + bytes(meta) }
    }
}

/// A chosen schedule with its cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The schedule to build with [`Schedule::new`] (or [`Plan::schedule`]).
    pub kind: ScheduleKind,
    /// `T`, the number of training steps.
    pub steps: usize,
    /// Slots the schedule uses ([`Schedule::slots`]).
    pub slots: usize,
    /// Replayed (untaped) training steps ([`Schedule::expected_replayed_steps`]).
    pub expected_replayed_steps: u64,
    /// `slots·state + state + adjoint`.
    pub peak_bytes: u64,
}

/// `slots·state + state + adjoint`: the peak memory of a schedule that uses `slots` slots. Errors if it
/// overflows `u64`.
pub fn peak_bytes(slots: usize, sizes: StateBytes) -> Result<u64> {
    (slots as u64).checked_add(1).and_then(|states| states.checked_mul(sizes.state)).and_then(|b| b.checked_add(sizes.adjoint)).ok_or_else(
        || Error::OutOfMemory {
            op: "plan",
            msg: format!("{slots} slots of {} bytes plus {} adjoint bytes overflow u64", sizes.state, sizes.adjoint),
        },
    )
}

impl Plan {
    /// The cost of an already built schedule.
    pub fn for_schedule(schedule: &Schedule, sizes: StateBytes) -> Result<Plan> {
        Ok(Plan {
            kind: schedule.kind(),
            steps: schedule.steps(),
            slots: schedule.slots(),
            expected_replayed_steps: schedule.expected_replayed_steps(),
            peak_bytes: peak_bytes(schedule.slots(), sizes)?,
        })
    }

    /// The schedule this plan describes.
    pub fn schedule(&self) -> Result<Schedule> {
        Schedule::new(self.kind, self.steps)
    }
}

/// The cost of REPLAY's lazy `k`-ary tree over `steps = T`, to show beside [`plan`]'s choice. Errors as
/// [`Schedule::new`].
pub fn plan_kary(k: usize, sizes: StateBytes, steps: usize) -> Result<Plan> {
    Plan::for_schedule(&Schedule::new(ScheduleKind::KAry { k }, steps)?, sizes)
}

/// The schedule with the fewest replayed steps whose peak memory fits in `budget_bytes`: StoreAll if
/// `T − 1` slots fit, else revolve with as many slots as fit. Errors: `T = 0` ([`Error::Invalid`]), or a
/// budget below the minimum `peak_bytes(1 slot)` (`peak_bytes(0)` for `T = 1`), an
/// [`Error::OutOfMemory`] that states that minimum.
pub fn plan(budget_bytes: u64, sizes: StateBytes, steps: usize) -> Result<Plan> {
    let store_all = Schedule::new(ScheduleKind::StoreAll, steps)?;
    let min_slots = store_all.slots().min(1);
    let minimum = peak_bytes(min_slots, sizes)?;
    if budget_bytes < minimum {
        return Err(Error::OutOfMemory {
            op: "plan",
            msg: format!(
                "T = {steps} steps need at least {minimum} bytes ({min_slots} slot + 1 working state of {} bytes \
                 each, + {} adjoint bytes); the budget is {budget_bytes} bytes",
                sizes.state, sizes.adjoint
            ),
        });
    }
    // budget ≥ state + adjoint here, so the subtraction cannot underflow.
    let fit = match sizes.state {
        0 => usize::MAX,
        state => usize::try_from((budget_bytes - sizes.state - sizes.adjoint) / state).unwrap_or(usize::MAX),
    };
    if fit >= store_all.slots() {
        return Plan::for_schedule(&store_all, sizes);
    }
    Plan::for_schedule(&Schedule::new(ScheduleKind::Revolve { slots: fit }, steps)?, sizes)
}

/// Bytes in binary units with one decimal ("1.5 GiB").
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = None;
    for next in UNITS.iter().skip(1) {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = Some(next);
    }
    match unit {
        None => format!("{bytes} B"),
        Some(unit) => format!("{value:.1} {unit}"),
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.kind {
            ScheduleKind::StoreAll => "store_all".to_string(),
            ScheduleKind::Revolve { .. } => "revolve".to_string(),
            ScheduleKind::KAry { k } => format!("kary (k = {k})"),
        };
        let per_step = self.expected_replayed_steps as f64 / self.steps as f64;
        write!(
            f,
            "{name}: T = {}, {} slot{}, {} replayed steps ({per_step:.2} per step), peak {}",
            self.steps,
            self.slots,
            if self.slots == 1 { "" } else { "s" },
            self.expected_replayed_steps,
            human_bytes(self.peak_bytes)
        )
    }
}

/// Two memory tiers for checkpoint slots: fast memory (device memory on a GPU) holds the working state,
/// the adjoint and as many slots as fit; slow memory (pinned host memory) holds more slots, each store
/// into or restore from it costing a copy. On the CPU backend both tiers are the same host memory and
/// [`plan`] is all there is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tiers {
    /// Fast-memory budget in bytes (working state, adjoint and fast slots).
    pub fast_bytes: u64,
    /// Slow-memory budget in bytes (slow slots only).
    pub slow_bytes: u64,
    /// The cost of copying one state between the tiers, in training-step units (e.g. state bytes over
    /// the link bandwidth, divided by the time of one untaped step).
    pub copy_steps: f64,
}

/// A plan over two memory tiers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TieredPlan {
    /// The schedule and its single-tier cost (its `peak_bytes` counts both tiers together).
    pub plan: Plan,
    /// Slots in fast memory.
    pub fast_slots: usize,
    /// Slots in slow memory: the schedule's least-used slot indices.
    pub slow_slots: usize,
    /// Stores and restores that touch slow slots (each one copy between the tiers).
    pub slow_copies: u64,
    /// Expected cost in training steps: replayed steps + copies·copy_steps.
    pub cost_steps: f64,
}

/// Per-slot stores + restores of a StoreAll or revolve schedule, run-length encoded (see
/// [`revolve_slot_traffic`]); StoreAll stores and restores each of its slots once.
fn slot_traffic(schedule: &Schedule) -> Result<Runs> {
    match schedule.kind() {
        ScheduleKind::Revolve { slots } => revolve_slot_traffic(schedule.steps(), slots),
        _ => Ok(vec![(2, schedule.slots() as u64)]),
    }
}

/// The stores and restores of the `n` least-used slots.
fn least_traffic(mut runs: Runs, mut n: u64) -> u64 {
    runs.sort_unstable();
    let mut total = 0u64;
    for (value, count) in runs {
        let take = count.min(n);
        total = total.saturating_add(value.saturating_mul(take));
        n -= take;
    }
    total
}

/// The cheapest schedule over two tiers: for each candidate slot count from what fits in fast memory up
/// to what fits in both, revolve (or StoreAll) with that many slots, its least-used slots placed in slow
/// memory; cost = replayed steps + `copy_steps` × the stores and restores of slow slots, counted from
/// revolve's recursion (instant even at T = 10⁹). Errors as [`plan`] when fast memory cannot hold even the minimum.
pub fn plan_tiered(tiers: Tiers, sizes: StateBytes, steps: usize) -> Result<TieredPlan> {
    if tiers.copy_steps.is_nan() || tiers.copy_steps < 0.0 {
        return Err(Error::Invalid { op: "plan_tiered", msg: format!("copy cost {} must be a non-negative number", tiers.copy_steps) });
    }
    let fast = plan(tiers.fast_bytes, sizes, steps)?;
    let slow_fit = tiers.slow_bytes.checked_div(sizes.state).map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let max_slots = Schedule::new(ScheduleKind::StoreAll, steps)?.slots();
    let top = fast.slots.saturating_add(slow_fit).min(max_slots);
    // Candidates: every count for small ranges, else a geometric grid (the cost is smooth in the count).
    let mut cands: Vec<usize> = if top - fast.slots <= 64 {
        (fast.slots..=top).collect()
    } else {
        let r = ((top as f64) / (fast.slots.max(1) as f64)).powf(1.0 / 63.0);
        (0..64).map(|i| ((fast.slots.max(1) as f64) * r.powi(i)).round() as usize).chain([fast.slots, top]).collect()
    };
    cands.sort_unstable();
    cands.dedup();
    // Each slow slot is stored once and restored at least once, so replayed + 2·copy·slow_slots bounds a
    // candidate's cost from below: counting traffic only where that bound beats the best so far keeps
    // the exact answer and skips most of the counting.
    let mut scored = Vec::with_capacity(cands.len());
    for slots in cands {
        let kind = if slots >= max_slots { ScheduleKind::StoreAll } else { ScheduleKind::Revolve { slots } };
        let schedule = Schedule::new(kind, steps)?;
        let p = Plan::for_schedule(&schedule, sizes)?;
        let slow_slots = p.slots.saturating_sub(fast.slots);
        let bound = p.expected_replayed_steps as f64 + tiers.copy_steps * 2.0 * slow_slots as f64;
        scored.push((bound, slots, schedule, p, slow_slots));
    }
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut best: Option<TieredPlan> = None;
    for (bound, _, schedule, p, slow_slots) in scored {
        if best.is_some_and(|b| bound >= b.cost_steps) {
            break;
        }
        let slow_copies = least_traffic(slot_traffic(&schedule)?, slow_slots as u64);
        let cost_steps = p.expected_replayed_steps as f64 + tiers.copy_steps * slow_copies as f64;
        let candidate = TieredPlan { plan: p, fast_slots: p.slots - slow_slots, slow_slots, slow_copies, cost_steps };
        if best.is_none_or(|b| cost_steps < b.cost_steps) {
            best = Some(candidate);
        }
    }
    best.ok_or_else(|| Error::Invalid { op: "plan_tiered", msg: "no candidate slot count".into() })
}

impl fmt::Display for TieredPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{} fast + {} slow slots, {} slow copies, cost {:.0} steps]",
            self.plan, self.fast_slots, self.slow_slots, self.slow_copies, self.cost_steps
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::schedule::Action;

    /// Per-slot traffic observed by running the schedule: the independent count.
    fn observed(schedule: &Schedule) -> Vec<u64> {
        let mut counts = vec![0u64; schedule.slots()];
        schedule
            .for_each(&mut |a| {
                if let Action::Store { slot, .. } | Action::Restore { slot, .. } = a {
                    counts[slot] += 1;
                }
                Ok(())
            })
            .unwrap();
        counts
    }

    fn expand(runs: &Runs) -> Vec<u64> {
        runs.iter().flat_map(|&(v, c)| std::iter::repeat_n(v, c as usize)).collect()
    }

    #[test]
    fn counted_traffic_is_the_schedules_traffic() {
        let mut cases: Vec<(usize, usize)> = (1..=80).flat_map(|t| (1..=t + 1).map(move |s| (t, s))).collect();
        cases.extend([(1000, 3), (4096, 7), (9999, 2), (5000, 1), (20_000, 150), (30_000, 12)]);
        for (t, s) in cases {
            for kind in [ScheduleKind::Revolve { slots: s }, ScheduleKind::StoreAll] {
                let schedule = Schedule::new(kind, t).unwrap();
                let mut counted = expand(&slot_traffic(&schedule).unwrap());
                counted.resize(schedule.slots(), 0);
                assert_eq!(counted, observed(&schedule), "{kind:?}, T = {t}");
            }
        }
    }

    #[test]
    fn least_traffic_sums_the_smallest() {
        assert_eq!(least_traffic(vec![(5, 2), (1, 3), (9, 1)], 4), 3 + 5);
        assert_eq!(least_traffic(vec![(5, 2)], 0), 0);
        assert_eq!(least_traffic(vec![(5, 2)], 10), 10);
    }
}
