//! `examples/gpt`'s model code (included with `#[path]`) at a tiny size on the bundled text: the
//! training loss falls, training and sampling are deterministic, the safetensors checkpoint round
//! trip is exact, and REPLAY's metagradient of the validation loss in the per-sequence data weights
//! agrees with central finite differences of independent re-trainings (`replay::evaluate`).

#[path = "../examples/gpt/model.rs"]
mod model;

use metagrad::replay::{train, train_with, StepInfo};
use metagrad::{DType, Result};
use model::{Config, Gpt, Hyper, Run, Vocab};

/// The first 40,000 characters of the bundled text, as ids of its vocabulary.
fn text() -> (Vocab, Vec<usize>) {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/data/shakespeare/shakespeare8.txt")).expect("bundled text");
    assert_eq!(bytes.len(), 1_091_703, "data/shakespeare/shakespeare8.txt is not the documented file");
    let vocab = Vocab::of(&bytes);
    let ids = vocab.encode(&bytes[..40_000]).expect("ids");
    (vocab, ids)
}

fn tiny(dtype: DType, vocab: usize) -> Gpt {
    Gpt::new(Config { d: 16, heads: 2, blocks: 2, ctx: 16, dtype, seed: 7 }, vocab).expect("model")
}

fn hyper(steps: usize, batch: usize, t0: usize) -> Hyper {
    Hyper { steps, batch, lr: 1e-2, warmup: 2, clip: 1.0, weight_decay: 0.01, seed: 3, t0 }
}

#[test]
fn training_lowers_the_loss_deterministically_and_the_checkpoint_round_trip_is_exact() -> Result<()> {
    let (vocab, ids) = text();
    let (tr, val) = ids.split_at(36_000);
    let gpt = tiny(DType::F32, vocab.len());
    let run = Run::new(&gpt, &gpt.params, hyper(30, 8, 0), tr, val, 8, false)?;
    let before = run.val_loss(&gpt.params.to_state())?;
    let mut losses = Vec::new();
    let s1 = train_with(&run, &[], |i: &StepInfo<'_>| {
        losses.push(i.loss.as_ref().map(|l| l.to_scalar()).transpose()?.unwrap_or(f64::NAN));
        Ok(())
    })?;
    let after = run.val_loss(&s1[..gpt.params.len()])?;
    // A uniform guess costs ln 76 = 4.33 nats; 30 AdamW steps at lr 1e-2 learn the character
    // frequencies at least.
    assert!(before > 4.2 && after < before - 0.5, "validation loss {before} → {after}");
    assert!(losses.iter().all(|l| l.is_finite()) && losses.len() == 30);
    // Same inputs, same bits.
    let s2 = train(&run, &[])?;
    assert!(s1.iter().zip(&s2).all(|(a, b)| a.bit_eq(b)), "two training runs differ");

    let trained = run.params_of(&s1)?;
    let dir = std::env::temp_dir().join(format!("metagrad-gpt-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (v_saved, v_loaded) = model::checkpoint_round_trip(&run, &trained, &dir.join("gpt.safetensors"))?;
    assert_eq!(v_saved.to_bits(), v_loaded.to_bits());
    assert_eq!(v_saved.to_bits(), after.to_bits());
    std::fs::remove_dir_all(&dir).ok();

    // Sampling is a pure function of (parameters, prompt, seed); greedy decoding of a trained model
    // differs from a sample at temperature 1 somewhere in 40 characters.
    let prompt = vocab.encode(b"ROMEO.\n")?;
    let a = gpt.generate(&trained.to_state(), &prompt, 40, 1.0, 5)?;
    let b = gpt.generate(&trained.to_state(), &prompt, 40, 1.0, 5)?;
    let greedy = gpt.generate(&trained.to_state(), &prompt, 40, 0.0, 5)?;
    assert_eq!(a, b);
    assert_eq!(a.len(), 40);
    assert!(a.iter().chain(&greedy).all(|&i| i < vocab.len()));
    assert_ne!(a, greedy);
    Ok(())
}

#[test]
fn the_data_weight_metagradient_matches_finite_differences() -> Result<()> {
    let (vocab, ids) = text();
    let (tr, val) = ids.split_at(36_000);
    // A few f64 steps from a briefly trained state with its AdamW moments, as the example does.
    let gpt = tiny(DType::F64, vocab.len());
    let warm = Run::new(&gpt, &gpt.params, hyper(6, 4, 0), tr, val, 4, false)?;
    let state = warm.state_of(&train(&warm, &[])?)?;
    let run = Run::new(&gpt, &state, hyper(4, 3, 6), tr, val, 4, true)?;
    let r = model::meta_check(&run, &[0, 5, 11], 1e-4)?;
    assert_eq!(r.weights, 12);
    assert!(r.grad_norm > 0.0 && r.phi.is_finite());
    for c in &r.checks {
        assert!(c.replay != 0.0, "w[{}]: a zero metagradient checks nothing", c.index);
        assert!(c.rel_error < 1e-6, "w[{}]: REPLAY {} against finite difference {}", c.index, c.replay, c.finite_difference);
    }
    Ok(())
}
