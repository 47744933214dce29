//! What a metagradient costs next to plain training, measured in one run on the reference problem R1
//! (f64, CPU): wall time of REPLAY (k-ary tree for several k, revolve) and step-wise AD over the time of
//! one plain training run, beside the schedule's replayed steps per training step, the peak stored
//! states and arena bytes. Medians over `--reps` runs (default 7). Prints one JSON object, ending with
//! the machine (CPU model, threads, ISA level, measured f32 FMA peak).
//!
//! ```sh
//! cargo run --release --example replay_cost
//! ```
//! Theory: time ≈ (replayed_steps / T) training runs of untaped steps, plus T taped steps, each a
//! forward, a backward with `create_graph`, and a backward-over-backward; `taped_step_over_step` below is
//! that per-step cost in untaped steps, from the driver's clocks (`ReplayStats::taped_seconds` and
//! `replay_seconds`).

mod common;
use common::{median, Machine};
use metagrad::replay::reference::{Reference, ReferenceProblem};
use metagrad::replay::{metagradient, train, ScheduleKind, Training};
use metagrad::DType;
use std::time::Instant;

fn main() -> metagrad::Result<()> {
    // Kernels called from main run their tasks here instead of waking the pool (see the docs).
    metagrad::use_calling_thread()?;
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = args.iter().position(|a| a == "--reps").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(7);
    let p = ReferenceProblem::new(Reference::R1, DType::F64);
    let z = p.initial_meta();
    let t_steps = p.steps() as f64;
    let train_ms = median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                train(&p, &z).map(|_| t.elapsed().as_secs_f64() * 1e3)
            })
            .collect::<metagrad::Result<Vec<_>>>()?,
    );
    let kinds = [
        ("kary_k2", ScheduleKind::KAry { k: 2 }),
        ("kary_k4", ScheduleKind::KAry { k: 4 }),
        ("kary_k8", ScheduleKind::KAry { k: 8 }),
        ("revolve_s6", ScheduleKind::Revolve { slots: 6 }),
        ("stepwise", ScheduleKind::StoreAll),
    ];
    let mut rows = Vec::new();
    for (name, kind) in kinds {
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..reps {
            let t = Instant::now();
            last = Some(metagradient(&p, &z, kind)?);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let mg = last.expect("reps ≥ 1");
        let ms = median(times);
        let replays = mg.stats.replayed_steps as f64 / t_steps;
        // The taped step's cost in untaped steps, from the driver's own clocks.
        let per_replay = mg.stats.replay_seconds / (mg.stats.replayed_steps.max(1) as f64);
        let taped = mg.stats.taped_seconds / t_steps / per_replay;
        rows.push(format!(
            "\"{name}\": {{\"metagradient_ms\": {ms:.3}, \"over_training\": {:.3}, \"replayed_steps\": {}, \"replayed_per_step\": {replays:.3}, \"taped_step_over_step\": {taped:.3}, \"peak_states\": {}, \"arena_bytes\": {}}}",
            ms / train_ms,
            mg.stats.replayed_steps,
            mg.stats.arena.peak_slots,
            mg.stats.arena.total_bytes
        ));
    }
    let machine = Machine::measure().json_fields();
    println!(
        "{{\"problem\": \"R1\", \"T\": {}, \"reps\": {reps}, \"train_ms\": {train_ms:.3}, {}, \"machine\": {{{machine}}}}}",
        p.steps(),
        rows.join(", ")
    );
    Ok(())
}
