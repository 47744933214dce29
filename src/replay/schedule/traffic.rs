//! How often each slot of a revolve schedule is stored into or restored from, without emitting it.
//!
//! The tiered planner puts a schedule's least-used slots in slow memory, so it needs per-slot traffic for
//! many candidate slot counts. Emitting the schedule costs Θ(T) actions per candidate (minutes at
//! T = 10⁹); this module counts from the recursion instead. In [`super::revolve`] a segment of `n ≥ 2`
//! steps whose start is in the working state stores it in the slot one level below its parent's, then
//! walks a chain of splits `n → m₁ → m₂ → … → 1`, each split reversing a right part of `nᵢ − mᵢ` steps
//! with one slot fewer (one level further down; parts of one step use no slot) and then restoring its own
//! slot to continue with the left part. So its traffic, level by level, is `1 + k` at its own level (one
//! store, one restore per split) followed by the sum of its right parts' traffic. Slots are handed out
//! LIFO, so level ℓ is slot ℓ. Traffic vectors are run-length encoded (deep store-all-like chains give
//! long runs) and memoized by `(n, s)`; an explicit stack keeps deep chains off the call stack.

use super::{beta, repetition_number, revolve_split_at};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::rc::Rc;

/// Per-slot traffic from slot 0 down, run-length encoded: `(stores + restores, number of slots)`.
pub(crate) type Runs = Vec<(u64, u64)>;

/// The split chain of a segment of `n` steps with `s` slots: the number of splits and the right parts
/// that need a slot (two or more steps).
fn chain(mut n: usize, s: usize) -> (u64, Vec<usize>) {
    let (mut splits, mut rights) = (0, Vec::new());
    // The repetition number only falls along the chain: step it down instead of searching each time.
    let mut r = repetition_number(n, s);
    while n >= 2 {
        while r > 1 && beta(s, r - 1, n as u128) >= n as u128 {
            r -= 1;
        }
        let m = revolve_split_at(n, s, r);
        splits += 1;
        if n - m >= 2 {
            rights.push(n - m);
        }
        n = m;
    }
    (splits, rights)
}

/// The traffic of the two regimes with a closed form: one slot (each split moves the end back one
/// step: `n − 1` splits, one store) and enough slots for store-all (each slot stored once, restored once).
fn closed_form(n: usize, s: usize) -> Option<Runs> {
    if s == 1 {
        Some(vec![(n as u64, 1)])
    } else if n <= s.saturating_add(1) {
        Some(vec![(2, n as u64 - 1)])
    } else {
        None
    }
}

/// Appends `count` slots of traffic `value`, merging with the last run.
fn push(runs: &mut Runs, value: u64, count: u64) {
    match runs.last_mut() {
        Some(last) if last.0 == value => last.1 += count,
        _ if count > 0 => runs.push((value, count)),
        _ => {}
    }
}

/// The level-by-level sum of two traffic vectors (both start at the same slot).
fn add(a: &Runs, b: &Runs) -> Runs {
    let mut out = Runs::new();
    let (mut ia, mut ib) = (a.iter().copied(), b.iter().copied());
    let (mut ra, mut rb) = (ia.next(), ib.next());
    loop {
        match (ra, rb) {
            (Some((va, ca)), Some((vb, cb))) => {
                let c = ca.min(cb);
                push(&mut out, va + vb, c);
                ra = if ca > c { Some((va, ca - c)) } else { ia.next() };
                rb = if cb > c { Some((vb, cb - c)) } else { ib.next() };
            }
            (Some((v, c)), None) | (None, Some((v, c))) => {
                push(&mut out, v, c);
                // The other vector is done: the rest of this one follows as it is.
                for (v, c) in ia.by_ref().chain(ib.by_ref()) {
                    push(&mut out, v, c);
                }
                return out;
            }
            (None, None) => return out,
        }
    }
}

/// Counting work allowed per call, in units of about 10–50 ns (a split-chain step or a run added; a memo
/// entry counts 8): under a second. Slot counts in the thousands at T = 10⁹ need more; the error says so.
const WORK: u64 = 20_000_000;

/// Per-slot stores + restores of `Schedule::new(Revolve { slots }, steps)` (slot 0 first), counted from
/// the recursion. Agrees with running the schedule (tested against it). An [`Error::Invalid`] when the
/// count needs more than [`WORK`] operations.
pub(crate) fn revolve_slot_traffic(steps: usize, slots: usize) -> Result<Runs> {
    let mut work = 0u64;
    if steps < 2 {
        return Ok(Runs::new());
    }
    let mut memo: HashMap<(usize, usize), Rc<Runs>> = HashMap::new();
    let mut stack = vec![(steps, slots)];
    while let Some(&(n, s)) = stack.last() {
        if memo.contains_key(&(n, s)) {
            stack.pop();
            continue;
        }
        if let Some(runs) = closed_form(n, s) {
            memo.insert((n, s), Rc::new(runs));
            stack.pop();
            continue;
        }
        // n ≥ 2 here (parts of one step are never pushed), so it needs a slot.
        let below = s
            .checked_sub(1)
            .ok_or_else(|| Error::Invalid { op: "revolve_slot_traffic", msg: format!("internal: no slot left for {n} steps") })?;
        let (splits, rights) = chain(n, s);
        work += splits + 8;
        if work > WORK {
            return Err(Error::Invalid {
                op: "plan_tiered",
                msg: format!(
                    "counting the slot traffic of revolve with {slots} slots over T = {steps} steps needs more than {WORK} operations; give fewer slow bytes (fewer slots) or use plan()"
                ),
            });
        }
        let missing: Vec<(usize, usize)> = rights.iter().map(|&r| (r, below)).filter(|k| !memo.contains_key(k)).collect();
        if !missing.is_empty() {
            stack.extend(missing);
            continue;
        }
        let mut sub = Runs::new();
        for r in &rights {
            if let Some(part) = memo.get(&(*r, below)) {
                work += (sub.len() + part.len()) as u64;
                sub = add(&sub, part);
            }
        }
        let mut runs = vec![(1 + splits, 1)];
        for (v, c) in sub {
            push(&mut runs, v, c);
        }
        memo.insert((n, s), Rc::new(runs));
        stack.pop();
    }
    Ok(memo.remove(&(steps, slots)).map(|r| r.as_ref().clone()).unwrap_or_default())
}
