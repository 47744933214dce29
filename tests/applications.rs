//! The paper's application examples (`examples/{poisoning,lr_schedule,metasmoothness,
//! data_selection}.rs`, included with `#[path]`) run at reduced sizes through their command-line
//! parsers, each checked for the property it demonstrates (at these sizes, on the bundled data;
//! the runs are deterministic, so each outcome is a fixed fact of the code, not a sample) and for
//! the files it writes. The full-size results are in the README.

// Each example is its own crate root with its own `mod common;`, so this file loads the shared
// helpers once per example; that is the cost of testing the examples' own code, not a mistake.
#![allow(clippy::duplicate_mod)]

#[allow(dead_code)]
#[path = "../examples/data_selection.rs"]
mod data_selection;
#[allow(dead_code)]
#[path = "../examples/lr_schedule.rs"]
mod lr_schedule;
#[allow(dead_code)]
#[path = "../examples/metasmoothness.rs"]
mod metasmoothness;
#[allow(dead_code)]
#[path = "../examples/poisoning.rs"]
mod poisoning;

use clap::Parser;
use std::path::{Path, PathBuf};

fn out(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("metagrad-app-{name}-{}", std::process::id()))
}

/// The file exists and starts with `head` (a CSV header or the SVG tag).
fn written(dir: &Path, file: &str, head: &str) {
    let s = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert!(s.starts_with(head), "{file} starts with {:?}", &s[..s.len().min(60)]);
}

fn rises(v: &[f64]) -> bool {
    v.windows(2).all(|w| w[1] > w[0])
}

#[test]
fn poisoning_raises_the_validation_loss_and_lowers_test_accuracy() {
    let dir = out("poisoning");
    let args = poisoning::Args::parse_from(
        ["poisoning", "--json", "--device", "cpu", "--train", "512", "--steps", "80", "--iters", "3", "--eval-seeds", "1", "--out"]
            .iter()
            .copied()
            .chain([dir.to_str().unwrap()]),
    );
    let s = poisoning::run(&args).unwrap();
    assert_eq!(s.poisoned, 15, "3% of 512");
    // Every accepted MGD step raised φ (ascent), and the from-scratch model on the poisoned set (a
    // training seed the attack never saw) is less accurate than the clean one.
    assert!(s.val_losses.len() == 4 && rises(&s.val_losses), "{:?}", s.val_losses);
    assert!(s.poisoned_acc < s.clean_acc, "clean {} poisoned {}", s.clean_acc, s.poisoned_acc);
    assert!(s.clean_acc > 0.6 && s.baseline_acc > 0.6);
    written(&dir, "poisoning.csv", "iteration,validation_loss\n0,");
    written(&dir, "poisons.csv", "image,pixel,clean,poisoned\n");
    written(&dir, "poisoning.svg", "<svg");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn mgd_lowers_the_validation_loss_from_a_flat_learning_rate_and_the_grid_gets_its_compute() {
    let dir = out("lr");
    let args = lr_schedule::Args::parse_from(
        ["lr_schedule", "--json", "--device", "cpu", "--train", "512", "--steps", "80", "--iters", "2", "--out"]
            .iter()
            .copied()
            .chain([dir.to_str().unwrap()]),
    );
    let s = lr_schedule::run(&args).unwrap();
    assert!(s.mgd_losses.len() == 3 && s.mgd_losses.windows(2).all(|w| w[1] < w[0]), "{:?}", s.mgd_losses);
    assert_eq!(s.mgd_val_loss, s.mgd_losses[2]);
    // The grid spends MGD's measured compute (rounded to whole runs, three families).
    assert!(s.grid_runs >= 3 && (s.grid_runs as f64 - s.mgd_runs).abs() <= 3.5, "grid {} vs MGD {:.1} runs", s.grid_runs, s.mgd_runs);
    assert!(s.best_grid_val_loss.is_finite() && s.mgd_test_loss.is_finite());
    written(&dir, "lr_grid.csv", "family,peak_lr,validation_loss,test_loss\nconstant,0.01,");
    written(&dir, "lr_schedules.csv", "step,flat,mgd,best_grid\n0,0.02,");
    written(&dir, "lr_schedule.svg", "<svg");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn metasmoothness_table_covers_eight_configurations() {
    let dir = out("smooth");
    let args = metasmoothness::Args::parse_from(
        ["metasmoothness", "--json", "--device", "cpu", "--train", "256", "--steps", "60", "--images", "32", "--out"]
            .iter()
            .copied()
            .chain([dir.to_str().unwrap()]),
    );
    assert!(!args.opts.quick && args.h == 0.5);
    let rows = metasmoothness::run(&args).unwrap();
    assert_eq!(rows.len(), 8);
    for r in &rows {
        assert!((-1.0..=1.0).contains(&r.smoothness) && r.smoothness_sd >= 0.0, "{}: {}", r.name(), r.smoothness);
        assert!(r.accuracy > 0.3, "{}: accuracy {}", r.name(), r.accuracy);
        // One ascent step along the exact metagradient raises the validation loss.
        assert!(r.prediction_ratio > 0.0 && r.prediction_ratio.is_finite(), "{}: realized/predicted {}", r.name(), r.prediction_ratio);
    }
    // Configurations differ: a table of equal values would measure nothing.
    assert!(rows.iter().any(|r| r.smoothness != rows[0].smoothness));
    written(
        &dir,
        "metasmoothness.csv",
        "width,batch_norm,out_scale,metasmoothness,metasmoothness_sd,test_accuracy,prediction_ratio\n4,after,1,",
    );
    written(&dir, "metasmoothness.svg", "<svg");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn mgd_selects_mostly_the_target_source_and_beats_random_halves() {
    let dir = out("select");
    let args = data_selection::Args::parse_from(
        [
            "data_selection",
            "--json",
            "--pool",
            "256",
            "--steps",
            "100",
            "--iters",
            "1",
            "--seeds",
            "2",
            "--d",
            "24",
            "--ctx",
            "24",
            "--out",
        ]
        .iter()
        .copied()
        .chain([dir.to_str().unwrap()]),
    );
    let s = data_selection::run(&args).unwrap();
    assert!(s.mgd_losses.len() == 2 && s.mgd_losses[1] < s.mgd_losses[0], "{:?}", s.mgd_losses);
    assert!(s.selected_from_target_source > 0.5, "{}", s.selected_from_target_source);
    assert!(s.mgd_target_loss < s.random_target_loss_mean, "MGD {} random {}", s.mgd_target_loss, s.random_target_loss_mean);
    written(&dir, "selection_weights.csv", "passage,source,weight,selected\n0,");
    written(&dir, "selection_halves.csv", "half,target_loss\nmgd,");
    written(&dir, "data_selection.svg", "<svg");
    std::fs::remove_dir_all(&dir).ok();
}
