//! A validating simulator of checkpoint schedules: it replays the actions symbolically and measures
//! what they did, so the counts in tests and tables are observed, not computed from formulas.

use super::{Action, Schedule};
use crate::error::{invalid, Result};

/// What [`simulate`] measured while validating a schedule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScheduleStats {
    /// Peak number of occupied slots.
    pub slots_used: usize,
    /// Total untaped steps over all `Advance` actions.
    pub replayed_steps: u64,
    /// Number of `Store` actions.
    pub stores: u64,
    /// Number of `Restore` actions.
    pub restores: u64,
    /// Number of `Reverse` actions (`T` for a complete schedule).
    pub reversed: usize,
}

/// A symbolic checkpoint machine: tracks which step each slot and the working state hold, and rejects any
/// action that a real REPLAY driver could not execute. Feed it actions with [`Simulator::apply`] and call
/// [`Simulator::finish`]; [`simulate`] does this for a whole [`Schedule`].
#[derive(Clone, Debug)]
pub struct Simulator {
    steps: usize,
    slots: Vec<Option<usize>>,
    working: Option<usize>,
    occupied: usize,
    actions: u64,
    stats: ScheduleStats,
}

impl Simulator {
    /// A machine for `steps = T` training steps and `slots` slots, with `s_0` in the working state.
    pub fn new(steps: usize, slots: usize) -> Simulator {
        Simulator { steps, slots: vec![None; slots], working: Some(0), occupied: 0, actions: 0, stats: ScheduleStats::default() }
    }

    /// Executes one action, or says why it is invalid: Store into an empty slot `< slots` from a working
    /// state holding that step; Restore from a slot holding that step; Advance from the step the working
    /// state holds to a later one `< T`; Reverse of the next step in `T−1..0` held by the working state;
    /// Free of an occupied slot.
    pub fn apply(&mut self, action: Action) -> Result<()> {
        let index = self.actions;
        self.actions += 1;
        let fail = |why: String| invalid("simulate", format!("action #{index} {action:?}: {why}"));
        let next = self.steps.checked_sub(self.stats.reversed + 1);
        let slots = self.slots.len();
        match action {
            Action::Store { slot, step } => {
                let held = match self.slots.get_mut(slot) {
                    None => return fail(format!("slot out of range (schedule has {slots} slots)")),
                    Some(Some(held)) => return fail(format!("slot already holds s_{held}")),
                    Some(held) => held,
                };
                if self.working != Some(step) {
                    return fail(format!("working state holds {}", describe(self.working)));
                }
                *held = Some(step);
                self.occupied += 1;
                self.stats.slots_used = self.stats.slots_used.max(self.occupied);
                self.stats.stores += 1;
            }
            Action::Restore { slot, step } => {
                match self.slots.get(slot) {
                    None => return fail(format!("slot out of range (schedule has {slots} slots)")),
                    Some(&held) if held != Some(step) => return fail(format!("slot holds {}", describe(held))),
                    Some(_) => {}
                }
                self.working = Some(step);
                self.stats.restores += 1;
            }
            Action::Advance { from, to } => {
                if self.working != Some(from) {
                    return fail(format!("working state holds {}", describe(self.working)));
                }
                if to <= from || to >= self.steps {
                    return fail(format!("need from < to < T = {}", self.steps));
                }
                self.working = Some(to);
                self.stats.replayed_steps = self.stats.replayed_steps.saturating_add((to - from) as u64);
            }
            Action::Reverse { step } => {
                if next != Some(step) {
                    return fail(match next {
                        Some(n) => format!("the next step to reverse is {n}"),
                        None => "all steps are already reversed".to_string(),
                    });
                }
                if self.working != Some(step) {
                    return fail(format!("working state holds {}", describe(self.working)));
                }
                self.working = None;
                self.stats.reversed += 1;
            }
            Action::Free { slot } => match self.slots.get_mut(slot) {
                None => return fail(format!("slot out of range (schedule has {slots} slots)")),
                Some(None) => return fail("slot is already empty".to_string()),
                Some(held) => {
                    *held = None;
                    self.occupied -= 1;
                }
            },
        }
        Ok(())
    }

    /// The stats so far; an error if not all `T` steps were reversed.
    pub fn finish(&self) -> Result<ScheduleStats> {
        if self.stats.reversed != self.steps {
            return invalid("simulate", format!("schedule ended after reversing {} of T = {} steps", self.stats.reversed, self.steps));
        }
        Ok(self.stats)
    }
}

fn describe(state: Option<usize>) -> String {
    state.map_or_else(|| "nothing (invalid)".to_string(), |s| format!("s_{s}"))
}

/// Runs `schedule` on a [`Simulator`] with `schedule.slots()` slots, validating every action, and returns
/// what it measured. An invalid or incomplete schedule is an [`Error::Invalid`](crate::Error::Invalid) naming the action.
pub fn simulate(schedule: &Schedule) -> Result<ScheduleStats> {
    let mut sim = Simulator::new(schedule.steps(), schedule.slots());
    schedule.for_each(&mut |a| sim.apply(a))?;
    sim.finish()
}
