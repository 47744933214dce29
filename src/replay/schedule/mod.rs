//! Checkpoint schedules: in which order REPLAY stores, restores, replays and reverses training states.
//!
//! # The problem
//!
//! A training run is a chain of states `s_0 → s_1 → … → s_T` with `s_{t+1} = h_t(s_t)`. Its reverse pass
//! (paper §2.3, appendix A.2) needs `s_{T−1}, s_{T−2}, …, s_0` in that order: from each `s_t` the driver
//! takes the *taped* step `h_t` and backpropagates through it. Keeping all `T` states is often too much
//! memory, so states live in a fixed pool of checkpoint *slots*, and a missing state is recomputed by
//! replaying untaped training steps from a stored one. A [`Schedule`] is the list of [`Action`]s that does
//! this; [`Schedule::for_each`] streams it without ever materializing it (`T` may be `10^6`), using memory
//! proportional to the slot count plus the recursion depth.
//!
//! # Conventions (used by the tests, the example and the planner)
//!
//! * At the start the working state holds `s_0` and every slot is empty. `s_T` is never needed on its own:
//!   the taped step at `t = T − 1` produces it.
//! * **slots** = the number of distinct slot indices a schedule uses = the peak number of stored states,
//!   including the slot holding `s_0`. The working state is not a slot. Slots are reused LIFO, so the
//!   distinct indices are exactly `0..slots`. A state the schedule never reads back is never stored, so
//!   `T = 1` needs no slot at all and `T ≥ 2` needs at least one (for `s_0`).
//! * **replayed steps** = the total untaped steps over all [`Action::Advance`]s, including the first
//!   forward sweep from `s_0` to `s_{T−1}`. The `T` taped steps are not counted.
//!
//! # The three schedules
//!
//! * [`ScheduleKind::StoreAll`] (plain step-wise AD, the paper's Algorithm 2): store `s_0 … s_{T−2}` while
//!   advancing; `s_{T−1}` is still in the working state when its step is reversed, so storing it would be a
//!   copy nobody reads. slots `= T − 1` (0 for `T = 1`), replayed `= T − 1`. With the working state this
//!   keeps all `T` states in memory at once.
//! * [`ScheduleKind::KAry`], the lazy `k`-ary tree of REPLAY (paper A.2), for any `T ≥ 1`, `k ≥ 2`.
//!   `traverse(lo, hi)`, with `s_lo` in the working state or a slot: if `hi − lo = 1`, restore `s_lo` if the
//!   working state does not hold it and reverse step `lo`. Otherwise cut `[lo, hi)` into
//!   `m = min(k, hi − lo)` contiguous segments whose sizes differ by at most one, **the larger ones last**
//!   (see [`kary_segment_sizes`]; the advance at this level is `n − size_last`, so a large last segment
//!   replays least), store `s_lo` if it is not stored yet, advance to each later segment start and store it
//!   — except the last segment's start, which stays in the working state and is stored by its own traversal
//!   only if it has more than one step — then traverse the segments from last to first, freeing each stored
//!   segment start once its segment is done.
//!   Counters, by a recursion over segment sizes `n_0 ≤ … ≤ n_{m−1}` (independent of the emitter):
//!   `R(1) = 0`, `R(n) = (n − n_{m−1}) + Σ R(n_i)`; `P(1) = 0`,
//!   `P(n) = max(m − 1 + P(n_{m−1}), max_{i ≤ m−2} (i + max(P(n_i), 1)))` (see [`kary_replayed_steps`],
//!   [`kary_peak_slots`]). For `T = k^d` every level replays `T·(1 − 1/k)` steps and keeps `k − 1` more
//!   states, so **replayed `= d·(k − 1)·k^{d−1}`** and **slots `= d·(k − 1)`**; in general slots
//!   `≤ (k − 1)·⌈log_k T⌉ ≤ k·⌈log_k T⌉ + 1`, the paper's `O(k log_k T)` bound (the paper counts `k` per
//!   level because it also stores the last child, which here stays in the working state).
//! * [`ScheduleKind::Revolve`]: Griewank & Walther's binomial checkpointing (ACM TOMS 26(1), 2000,
//!   "Algorithm 799: revolve"), optimal for a given slot count `s ≥ 1`. With `β(s, r) = C(s + r, s)` (the
//!   most steps `s` slots reverse when no step is replayed more than `r` times) and `r` the smallest integer
//!   with `β(s, r) ≥ T`, it replays exactly `t(T, s) = r·T − C(s + r, s + 1)` steps, the minimum over all
//!   schedules with `s` slots ([`revolve_replayed_steps`]; the tests check this against a dynamic program).
//!   If `s ≥ T − 1` it is [`ScheduleKind::StoreAll`] (`r = 1`, `t = T − 1`).
//!   The split: store `s_lo`, advance `m` steps, reverse `[lo + m, hi)` with `s − 1` slots, then
//!   `[lo, lo + m)` with `s` slots. Both halves are optimal with rep. numbers `r` and `r − 1` exactly when
//!   `max(β(s, r−2), n − β(s−1, r)) ≤ m ≤ min(β(s, r−1), n − β(s−1, r−1))` (`n = hi − lo`); Pascal's rule
//!   `β(s+1, r−1) = β(s, r−1) + β(s+1, r−2)` then gives `t(n, s) = m + t(n−m, s−1) + t(m, s)`. We take the
//!   smallest such `m ≥ 1` (alg. 799 may pick another point of the same interval): the right part then has
//!   at least `s` steps, so the schedule uses exactly `min(s, T − 1)` slots.
//!
//! At equal slot count revolve never replays more than the `k`-ary tree (it is optimal), and strictly fewer
//! steps exactly when `T > k² + k + 1`; for `T ≤ k² + k + 1` (e.g. `T = 4, k = 2`: 4 steps with 2 slots)
//! the tree happens to be optimal too. (Found empirically; `tests/schedules.rs` checks it for `k ≤ 9`,
//! `T ≤ 2000`.)

mod simulate;
mod traffic;
pub use simulate::{simulate, ScheduleStats, Simulator};
pub(crate) use traffic::{revolve_slot_traffic, Runs};

use crate::error::{invalid, Error, Result};
use std::collections::HashMap;

/// One instruction of a checkpoint schedule. At the start the working state holds `s_0` and all slots are
/// empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Copy the working state (which holds `s_step`) into the empty slot `slot`.
    Store {
        /// The slot written, `< Schedule::slots()`.
        slot: usize,
        /// The step whose state is copied.
        step: usize,
    },
    /// Copy slot `slot` (which holds `s_step`) into the working state.
    Restore {
        /// The slot read.
        slot: usize,
        /// The step whose state it holds.
        step: usize,
    },
    /// Run untaped training steps on the working state, from `s_from` to `s_to` (`from < to`):
    /// `to − from` replayed steps.
    Advance {
        /// The step the working state holds before.
        from: usize,
        /// The step it holds after.
        to: usize,
    },
    /// The working state holds `s_step`: take the taped step `h_step` and backpropagate through it.
    /// Afterwards the working state is invalid (must be restored before further use). Steps are reversed
    /// in the order `T−1, T−2, …, 0`, each exactly once.
    Reverse {
        /// The training step reversed.
        step: usize,
    },
    /// Slot `slot` is no longer needed (it becomes empty).
    Free {
        /// The slot released.
        slot: usize,
    },
}

/// Which checkpoint schedule to run (see the module docs for what each does and costs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleKind {
    /// REPLAY's lazy `k`-ary tree (paper appendix A.2), `k ≥ 2`.
    KAry {
        /// Branching factor: how many segments each level cuts a range into.
        k: usize,
    },
    /// Optimal binomial checkpointing (Griewank & Walther, alg. 799) with at most `slots ≥ 1` slots.
    Revolve {
        /// The slot budget, including the slot holding `s_0`.
        slots: usize,
    },
    /// Store every state (step-wise AD): `T − 1` slots, `T − 1` replayed steps.
    StoreAll,
}

/// A checkpoint schedule for `T` training steps: its kind, slot count and replay count, and a streaming
/// emitter of its [`Action`]s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    kind: ScheduleKind,
    steps: usize,
    slots: usize,
    replayed: u64,
}

impl Schedule {
    /// A schedule of `kind` for `steps = T` training steps. Errors: `T = 0`, `k < 2`, `slots = 0`, or a
    /// replay count that does not fit in `u64`.
    pub fn new(kind: ScheduleKind, steps: usize) -> Result<Schedule> {
        if steps == 0 {
            return invalid("Schedule::new", format!("T = 0 training steps for {kind:?}; need T >= 1"));
        }
        let (slots, replayed) = match kind {
            ScheduleKind::KAry { k } => (kary_peak_slots(steps, k)?, kary_replayed_steps(steps, k)?),
            ScheduleKind::Revolve { slots } => {
                let replayed = revolve_replayed_steps(steps, slots)?;
                (slots.min(steps - 1), replayed)
            }
            ScheduleKind::StoreAll => (steps - 1, steps as u64 - 1),
        };
        Ok(Schedule { kind, steps, slots, replayed })
    }

    /// `T`, the number of training steps reversed.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The kind this schedule was built from.
    pub fn kind(&self) -> ScheduleKind {
        self.kind
    }

    /// How many slots the actions use (every slot index is `< slots()`, and all are used); size the
    /// checkpoint arena from this before running. For revolve this is `min(slots, T − 1)`.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The replayed steps the schedule will take, from the closed forms / size recursions of the module
    /// docs (not by running [`Schedule::for_each`]).
    pub fn expected_replayed_steps(&self) -> u64 {
        self.replayed
    }

    /// Calls `f` on each action in order. Stops at, and returns, the first error `f` returns. Memory is
    /// `O(slots + recursion depth)`; the action list is never materialized.
    pub fn for_each(&self, f: &mut dyn FnMut(Action) -> Result<()>) -> Result<()> {
        let mut e = Emitter { f, working: Some(0), free: Vec::new(), next_slot: 0 };
        match self.kind {
            ScheduleKind::StoreAll => store_all(&mut e, self.steps),
            ScheduleKind::KAry { k } => kary(&mut e, self.steps, k),
            ScheduleKind::Revolve { slots } => revolve(&mut e, self.steps, slots),
        }
    }
}

/// The segment sizes the `k`-ary tree cuts a range of `n ≥ 1` steps into: `min(k, n)` sizes that differ by
/// at most one, smaller ones first (so the last segment, reached by advancing least, is a largest one).
/// Errors: `n = 0` or `k < 2`.
pub fn kary_segment_sizes(n: usize, k: usize) -> Result<Vec<usize>> {
    check_kary("kary_segment_sizes", n, k)?;
    Ok(segment_sizes(n, k).collect())
}

fn segment_sizes(n: usize, k: usize) -> impl Iterator<Item = usize> {
    let m = k.min(n);
    let (q, rem) = (n / m, n % m);
    (0..m).map(move |i| q + usize::from(i >= m - rem))
}

fn check_kary(op: &'static str, steps: usize, k: usize) -> Result<()> {
    if steps == 0 || k < 2 {
        return invalid(op, format!("k-ary tree with T = {steps} steps and k = {k}; need T >= 1 and k >= 2"));
    }
    Ok(())
}

/// Replayed steps of the lazy `k`-ary tree over `T = steps`: `R(T)` from the recursion
/// `R(1) = 0`, `R(n) = (n − n_last) + Σ R(n_i)` over [`kary_segment_sizes`]. Equals `d·(k − 1)·k^{d−1}`
/// when `T = k^d`. Errors: `T = 0`, `k < 2`, or overflow of `u64`.
pub fn kary_replayed_steps(steps: usize, k: usize) -> Result<u64> {
    check_kary("kary_replayed_steps", steps, k)?;
    let (replayed, _) = kary_counts(steps, k, &mut HashMap::new());
    u64::try_from(replayed)
        .map_err(|_| Error::Invalid { op: "kary_replayed_steps", msg: format!("replayed steps for T = {steps}, k = {k} overflow u64") })
}

/// Peak slots of the lazy `k`-ary tree over `T = steps`: `P(T)` from the recursion `P(1) = 0`,
/// `P(n) = max(m − 1 + P(n_{m−1}), max_{i ≤ m−2} (i + max(P(n_i), 1)))` over [`kary_segment_sizes`]. Equals
/// `d·(k − 1)` when `T = k^d`, and is at most `(k − 1)·⌈log_k T⌉`. Errors: `T = 0` or `k < 2`.
pub fn kary_peak_slots(steps: usize, k: usize) -> Result<usize> {
    check_kary("kary_peak_slots", steps, k)?;
    Ok(kary_counts(steps, k, &mut HashMap::new()).1)
}

/// `(R(n), P(n))`, memoized. The `m` segments have `m − rem` sizes `q = ⌊n/m⌋` then `rem = n mod m` sizes
/// `q + 1`, so this is `O(1)` per size, and nested near-equal splits only ever produce two consecutive
/// sizes per level: `O(log_k n)` sizes in all. `R(n) ≤ n·log2(n) < 2^128` cannot overflow.
fn kary_counts(n: usize, k: usize, memo: &mut HashMap<usize, (u128, usize)>) -> (u128, usize) {
    if n == 1 {
        return (0, 0);
    }
    if let Some(&c) = memo.get(&n) {
        return c;
    }
    let m = k.min(n); // ≥ 2
    let (q, rem) = (n / m, n % m);
    let (r_q, p_q) = kary_counts(q, k, memo);
    let (r_q1, p_q1) = if rem > 0 { kary_counts(q + 1, k, memo) } else { (0, 0) };
    let (last, p_last) = if rem > 0 { (q + 1, p_q1) } else { (q, p_q) };
    let replayed = (n - last) as u128 + (m - rem) as u128 * r_q + rem as u128 * r_q1;
    // While the last segment runs, the m − 1 earlier starts are stored and it adds its own P. While
    // segment i < m − 1 runs, the starts of segments 0..=i are stored (i + 1 slots); its own start is one of
    // them, so it adds P − 1 more (nothing for a single step): i + max(P, 1), largest for the largest i of
    // each size.
    let mut peak = m - 1 + p_last;
    peak = peak.max((m - rem - 1).min(m - 2) + p_q.max(1));
    if rem >= 2 {
        peak = peak.max(m - 2 + p_q1.max(1));
    }
    memo.insert(n, (replayed, peak));
    (replayed, peak)
}

/// `C(n, k)` if it is below `cap`, else `cap` (exact integer arithmetic; `cap ≤ 2^64`).
fn binom_capped(n: u128, k: u128, cap: u128) -> u128 {
    if k > n {
        return 0;
    }
    let k = k.min(n - k);
    let mut c: u128 = 1;
    for i in 0..k {
        // c = C(n, i) < cap; C(n, i + 1) = c·(n − i)/(i + 1) exactly. An overflowing product means
        // C(n, i + 1) ≥ 2^128/(i + 1) ≥ 2^64 ≥ cap, and C(n, ·) only grows up to k ≤ n/2.
        c = match c.checked_mul(n - i) {
            Some(p) => p / (i + 1),
            None => return cap,
        };
        if c >= cap {
            return cap;
        }
    }
    c
}

/// `β(s, r) = C(s + r, s)` capped at `cap`, with `β(s, r) = 0` for `r < 0`.
pub(super) fn beta(s: usize, r: i128, cap: u128) -> u128 {
    if r < 0 {
        return 0;
    }
    binom_capped(s as u128 + r as u128, s as u128, cap)
}

/// The repetition number: the smallest `r ≥ 0` with `β(s, r) ≥ n` (`s ≥ 1`, `n ≥ 1`; `r ≤ n − 1`).
pub(super) fn repetition_number(n: usize, s: usize) -> i128 {
    let cap = n as u128;
    if n <= 1 {
        return 0;
    }
    let mut hi: i128 = 1;
    while beta(s, hi, cap) < cap {
        hi *= 2;
    }
    let mut lo = hi / 2; // β(s, lo) < n ≤ β(s, hi)
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if beta(s, mid, cap) >= cap {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// The optimal replayed steps with `slots` slots over `T = steps`: `t(T, s) = r·T − C(s + r, s + 1)`,
/// `r` the smallest integer with `C(s + r, s) ≥ T`. Examples: `t(1, 1) = 0`, `t(2, 1) = 1`, `t(3, 1) = 3`,
/// `t(3, 2) = 2`; `t(T, s) = T − 1` for `s ≥ T − 1`. Errors: `T = 0`, `slots = 0`, overflow of `u64`.
pub fn revolve_replayed_steps(steps: usize, slots: usize) -> Result<u64> {
    if steps == 0 || slots == 0 {
        return invalid("revolve", format!("revolve with T = {steps} steps and {slots} slots; need T >= 1 and slots >= 1"));
    }
    if steps == 1 {
        return Ok(0);
    }
    let (t, s) = (steps as u128, slots as u128);
    let r = repetition_number(steps, slots) as u128;
    // C(s + r, s + 1) = β(s, r − 1)·(s + r)/(s + 1), where β(s, r − 1) < T is exact.
    let below = beta(slots, r as i128 - 1, t);
    let total = below.checked_mul(s + r).map(|b| r * t - b / (s + 1)).and_then(|total| u64::try_from(total).ok());
    total.ok_or_else(|| Error::Invalid { op: "revolve", msg: format!("replayed steps for T = {steps}, {slots} slots overflow u64") })
}

/// The first checkpoint offset of an optimal revolve split of `n ≥ 2` steps with `s ≥ 1` slots: the
/// smallest `m ≥ 1` of the optimal interval in the module docs.
pub(super) fn revolve_split(n: usize, s: usize) -> usize {
    revolve_split_at(n, s, repetition_number(n, s))
}

/// [`revolve_split`] given the repetition number `r` of `(n, s)`.
pub(super) fn revolve_split_at(n: usize, s: usize, r: i128) -> usize {
    let cap = n as u128;
    let lower = beta(s, r - 2, cap).max(cap - beta(s - 1, r, cap)).max(1);
    lower as usize
}

/// Streams actions while tracking the working state and the free slots (LIFO), so the schedules below
/// only say *what* they need and never emit a pointless Restore.
struct Emitter<'a> {
    f: &'a mut dyn FnMut(Action) -> Result<()>,
    working: Option<usize>,
    free: Vec<usize>,
    next_slot: usize,
}

impl Emitter<'_> {
    fn store(&mut self, step: usize) -> Result<usize> {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.next_slot += 1;
            self.next_slot - 1
        });
        (self.f)(Action::Store { slot, step })?;
        Ok(slot)
    }

    /// Makes the working state hold `step`, restoring it from `slot` if it does not already.
    fn ensure(&mut self, step: usize, slot: Option<usize>) -> Result<()> {
        if self.working != Some(step) {
            let slot = slot.ok_or_else(|| Error::Invalid {
                op: "Schedule::for_each",
                msg: format!("internal: s_{step} is neither in the working state nor stored"),
            })?;
            (self.f)(Action::Restore { slot, step })?;
            self.working = Some(step);
        }
        Ok(())
    }

    fn advance(&mut self, from: usize, to: usize) -> Result<()> {
        (self.f)(Action::Advance { from, to })?;
        self.working = Some(to);
        Ok(())
    }

    fn reverse(&mut self, step: usize, slot: Option<usize>) -> Result<()> {
        self.ensure(step, slot)?;
        (self.f)(Action::Reverse { step })?;
        self.working = None;
        Ok(())
    }

    /// Starts a segment beginning at `s_lo`: with its slot, make the working state hold `s_lo`;
    /// without one, store `s_lo` and schedule the new slot's release for when the segment is done.
    fn enter(&mut self, lo: usize, slot: Option<usize>, stack: &mut Vec<Task>) -> Result<usize> {
        match slot {
            Some(slot) => {
                self.ensure(lo, Some(slot))?;
                Ok(slot)
            }
            None => {
                let slot = self.store(lo)?;
                stack.push(Task::Free(slot));
                Ok(slot)
            }
        }
    }

    fn free(&mut self, slot: usize) -> Result<()> {
        (self.f)(Action::Free { slot })?;
        self.free.push(slot);
        Ok(())
    }
}

/// Pending work of the iterative traversals (an explicit stack, so deep recursions cannot overflow).
enum Task {
    /// Reverse steps `lo..hi`; `s_lo` is in the working state or in `slot`. `s` is revolve's slot budget
    /// (counting `slot`), unused by the `k`-ary tree.
    Segment { lo: usize, hi: usize, slot: Option<usize>, s: usize },
    /// Release a slot whose segment is done.
    Free(usize),
}

fn store_all(e: &mut Emitter, steps: usize) -> Result<()> {
    for t in 0..steps - 1 {
        e.store(t)?;
        e.advance(t, t + 1)?;
    }
    e.reverse(steps - 1, None)?;
    // Slot t holds s_t (slots are allocated in order).
    for t in (0..steps - 1).rev() {
        e.reverse(t, Some(t))?;
        e.free(t)?;
    }
    Ok(())
}

fn kary(e: &mut Emitter, steps: usize, k: usize) -> Result<()> {
    let mut stack = vec![Task::Segment { lo: 0, hi: steps, slot: None, s: 0 }];
    while let Some(task) = stack.pop() {
        let (lo, hi, slot) = match task {
            Task::Free(slot) => {
                e.free(slot)?;
                continue;
            }
            Task::Segment { lo, hi, slot, .. } => (lo, hi, slot),
        };
        if hi - lo == 1 {
            e.reverse(lo, slot)?;
            continue;
        }
        let first = e.enter(lo, slot, &mut stack)?;
        let sizes: Vec<usize> = segment_sizes(hi - lo, k).collect();
        // m = min(k, hi − lo) ≥ 2 segments: the first, the middle ones and the last.
        let [size0, middle @ .., _] = sizes.as_slice() else {
            return Err(Error::Invalid {
                op: "Schedule::for_each",
                msg: format!("internal: steps {lo}..{hi} cut into fewer than 2 segments"),
            });
        };
        // Segment 0 starts at lo (already stored in `first`); its Free, if owned, is pushed above.
        let mut start = lo + size0;
        stack.push(Task::Segment { lo, hi: start, slot: Some(first), s: 0 });
        e.advance(lo, start)?;
        for &size in middle {
            let slot = e.store(start)?;
            stack.push(Task::Free(slot));
            stack.push(Task::Segment { lo: start, hi: start + size, slot: Some(slot), s: 0 });
            e.advance(start, start + size)?;
            start += size;
        }
        // The last segment's start is in the working state; its traversal stores it if it must.
        stack.push(Task::Segment { lo: start, hi, slot: None, s: 0 });
    }
    Ok(())
}

fn revolve(e: &mut Emitter, steps: usize, slots: usize) -> Result<()> {
    let mut stack = vec![Task::Segment { lo: 0, hi: steps, slot: None, s: slots }];
    while let Some(task) = stack.pop() {
        let (lo, hi, slot, s) = match task {
            Task::Free(slot) => {
                e.free(slot)?;
                continue;
            }
            Task::Segment { lo, hi, slot, s } => (lo, hi, slot, s),
        };
        if hi - lo == 1 {
            e.reverse(lo, slot)?;
            continue;
        }
        let slot = e.enter(lo, slot, &mut stack)?;
        // s ≥ 1 here: a range of n ≥ 2 steps only gets s − 1 slots if it is the right part of an s-slot
        // split, and with s = 1 that right part is a single step.
        let right_s = s
            .checked_sub(1)
            .ok_or_else(|| Error::Invalid { op: "revolve", msg: format!("internal: no slot left for steps {lo}..{hi}") })?;
        let m = revolve_split(hi - lo, s);
        stack.push(Task::Segment { lo, hi: lo + m, slot: Some(slot), s });
        stack.push(Task::Segment { lo: lo + m, hi, slot: None, s: right_s });
        e.advance(lo, lo + m)?;
    }
    Ok(())
}
