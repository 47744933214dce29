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
use crate::replay::schedule::{Schedule, ScheduleKind};
use std::fmt;

/// Memory sizes of one training run, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateBytes {
    /// Bytes of one optimizer state `s_t` (parameters, moments, step counters, ...).
    pub state: u64,
    /// Bytes the backward needs beside the states: the adjoint `s̄` and the taped step's working memory.
    pub adjoint: u64,
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
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
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
