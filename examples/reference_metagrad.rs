//! Metagradients of the reference problems R1 (SGD + momentum) and R2 (AdamW), in f64 on the CPU.
//!
//! ```sh
//! cargo run --release --example reference_metagrad -- r1            # REPLAY, lazy k-ary tree, k = 2
//! cargo run --release --example reference_metagrad -- r2 --k 3
//! cargo run --release --example reference_metagrad -- r1 --stepwise # step-wise AD (store every state)
//! ```
//! Prints one JSON object: `{"phi", "d_lr" (5), "d_w" (64), "stats": {"k", "replayed_steps", "peak_states"}}`
//! with numbers at full (round-trip) precision.

use metagrad::replay::reference::{Reference, ReferenceProblem};
use metagrad::replay::{metagradient, ScheduleKind};
use metagrad::DType;

fn usage() -> ! {
    eprintln!("usage: reference_metagrad r1|r2 [--k N] [--stepwise]");
    std::process::exit(2)
}

fn list(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:?}")).collect();
    format!("[{}]", items.join(", "))
}

fn main() {
    // Kernels called from main run their tasks here instead of waking the pool (see the docs).
    metagrad::use_calling_thread().expect("rayon is not used before main");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut kind, mut k, mut stepwise) = (None, 2usize, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "r1" => kind = Some(Reference::R1),
            "r2" => kind = Some(Reference::R2),
            "--k" => k = it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage()),
            "--stepwise" => stepwise = true,
            _ => usage(),
        }
    }
    let problem = ReferenceProblem::new(kind.unwrap_or_else(|| usage()), DType::F64);
    let schedule = if stepwise { ScheduleKind::StoreAll } else { ScheduleKind::KAry { k } };
    let mg = match metagradient(&problem, &problem.initial_meta(), schedule) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1)
        }
    };
    let k_json = if stepwise { "null".to_string() } else { k.to_string() };
    println!(
        "{{\"phi\": {:?}, \"d_lr\": {}, \"d_w\": {}, \"stats\": {{\"k\": {}, \"replayed_steps\": {}, \"peak_states\": {}}}}}",
        mg.phi,
        list(&mg.grads[0].to_vec_f64()),
        list(&mg.grads[1].to_vec_f64()),
        k_json,
        mg.stats.replayed_steps,
        mg.stats.arena.peak_slots
    );
}
