//! Compares REPLAY's lazy k-ary tree with optimal binomial checkpointing (revolve) and store-all.
//!
//! For T in {100, 1000, 4096, 100000} and k in {2, 4, 8} it runs the k-ary schedule through the validating
//! simulator (measured counts, not formulas), then revolve with the same number of slots, plus store-all
//! for T ≤ 4096, and prints slots, replayed steps and peak memory for a synthetic 1 MiB optimizer state
//! (2 MiB of adjoint and step workspace). Then it shows the memory planner's choice for a few budgets.
//!
//! `cargo run --release --example schedules` prints tables; `-- --json` prints the rows as a JSON list.

use metagrad::error::{Error, Result};
use metagrad::replay::plan::{peak_bytes, plan, plan_kary, plan_tiered, Plan, StateBytes, Tiers};
use metagrad::replay::schedule::{simulate, Schedule, ScheduleKind};

const MIB: u64 = 1 << 20;
const SIZES: StateBytes = StateBytes { state: MIB, adjoint: 2 * MIB };

/// One measured schedule run.
struct Row {
    schedule: &'static str,
    k: Option<usize>,
    steps: usize,
    slots: usize,
    replayed: u64,
    peak_bytes: u64,
}

fn measure(kind: ScheduleKind, steps: usize) -> Result<Row> {
    let stats = simulate(&Schedule::new(kind, steps)?)?;
    let (schedule, k) = match kind {
        ScheduleKind::KAry { k } => ("kary", Some(k)),
        ScheduleKind::Revolve { .. } => ("revolve", None),
        ScheduleKind::StoreAll => ("store_all", None),
    };
    Ok(Row {
        schedule,
        k,
        steps,
        slots: stats.slots_used,
        replayed: stats.replayed_steps,
        peak_bytes: peak_bytes(stats.slots_used, SIZES)?,
    })
}

fn rows() -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for steps in [100, 1000, 4096, 100_000] {
        for k in [2, 4, 8] {
            let kary = measure(ScheduleKind::KAry { k }, steps)?;
            let revolve = measure(ScheduleKind::Revolve { slots: kary.slots }, steps)?;
            if revolve.slots != kary.slots || revolve.replayed >= kary.replayed {
                return Err(Error::Invalid {
                    op: "schedules example",
                    msg: format!("revolve does not beat kary at T = {steps}, k = {k}, {} slots", kary.slots),
                });
            }
            rows.push(kary);
            rows.push(revolve);
        }
        if steps <= 4096 {
            rows.push(measure(ScheduleKind::StoreAll, steps)?);
        }
    }
    Ok(rows)
}

fn print_json(rows: &[Row]) {
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            let k = r.k.map_or_else(|| "null".to_string(), |k| k.to_string());
            format!(
                "  {{\"schedule\": \"{}\", \"k\": {k}, \"T\": {}, \"slots\": {}, \"replayed_steps\": {}, \"peak_bytes\": {}}}",
                r.schedule, r.steps, r.slots, r.replayed, r.peak_bytes
            )
        })
        .collect();
    println!("[\n{}\n]", items.join(",\n"));
}

fn print_table(rows: &[Row]) {
    println!("Checkpoint schedules, measured by the validating simulator (state 1 MiB, adjoint 2 MiB)\n");
    println!(
        "{:<10} {:>3} {:>7} {:>6} {:>15} {:>11} {:>13} {:>11}",
        "schedule", "k", "T", "slots", "replayed_steps", "replayed/T", "peak_bytes", "peak"
    );
    for (i, r) in rows.iter().enumerate() {
        if i > 0 && r.steps != rows[i - 1].steps {
            println!();
        }
        let k = r.k.map_or_else(|| "-".to_string(), |k| k.to_string());
        println!(
            "{:<10} {:>3} {:>7} {:>6} {:>15} {:>11.2} {:>13} {:>7} MiB",
            r.schedule,
            k,
            r.steps,
            r.slots,
            r.replayed,
            r.replayed as f64 / r.steps as f64,
            r.peak_bytes,
            r.peak_bytes / MIB
        );
    }
    let pairs = rows.iter().filter(|r| r.schedule == "revolve").count();
    println!("\nrevolve replays fewer steps than kary at equal slots in all {pairs} row pairs.");
}

fn print_plans() -> Result<()> {
    let steps = 100_000;
    println!("\nPlanner for T = {steps} (state 1 MiB, adjoint 2 MiB):");
    for budget_mib in [3, 4, 8, 20, 64, 1024, 100 * 1024] {
        println!("  budget {budget_mib:>6} MiB:");
        match plan(budget_mib * MIB, SIZES, steps) {
            Ok(p) => println!("    plan:       {p}"),
            Err(e) => println!("    plan:       {e}"),
        }
        // The k-ary tree with the fewest replays that fits, for comparison.
        let mut best: Option<Plan> = None;
        for k in 2..=steps {
            let p = plan_kary(k, SIZES, steps)?;
            let better = best.is_none_or(|b| p.expected_replayed_steps < b.expected_replayed_steps);
            if p.peak_bytes <= budget_mib * MIB && better {
                best = Some(p);
            }
        }
        match best {
            Some(p) => println!("    best k-ary: {p}"),
            None => println!("    best k-ary: no k fits"),
        }
    }
    println!("\nTwo tiers for T = {steps}: 8 MiB fast memory, slow memory for more slots, a copy costs c steps:");
    for (slow_mib, copy_steps) in [(0u64, 1.0), (64, 0.1), (64, 1.0), (64, 50.0), (1024, 1.0)] {
        let t = plan_tiered(Tiers { fast_bytes: 8 * MIB, slow_bytes: slow_mib * MIB, copy_steps }, SIZES, steps)?;
        println!("  slow {slow_mib:>5} MiB, c = {copy_steps:>4}: {t}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let rows = rows()?;
    if std::env::args().any(|a| a == "--json") {
        print_json(&rows);
        return Ok(());
    }
    print_table(&rows);
    print_plans()
}
