//! `metagrad::nn`: named parameters, their map to REPLAY's flat state, and safetensors files, read
//! from and checked against Python's `safetensors` package.
//!
//! The Python side: `tests/fixtures/params_fixture.safetensors` was written by
//! `tests/fixtures/make_safetensors_fixture.py` (committed; the test recomputes its formulas), and
//! `python_reads_files_metagrad_writes` runs `tests/fixtures/read_safetensors.py` when
//! `METAGRAD_PYTHON` names a python with `safetensors` and `torch` (it prints a skip notice
//! otherwise).

use metagrad::nn::{load_safetensors, save_safetensors, Params};
use metagrad::optim::{scalar, Sgd};
use metagrad::replay::{train, StepCtx, Training};
use metagrad::{DType, Device, Error, Result, Tensor, Var};
use std::error::Error as _;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A fresh path in cargo's per-test-target temporary directory.
fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("nn_params-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// IEEE binary16 bits of `x`, which must be exactly representable (an independent encoder: the test
/// does not trust the crate's conversions).
fn f16_bits(x: f64) -> u16 {
    let sign = if x.is_sign_negative() { 0x8000u16 } else { 0 };
    let a = x.abs();
    if a == 0.0 {
        return sign;
    }
    if a.is_infinite() {
        return sign | 0x7c00;
    }
    if a < 2f64.powi(-14) {
        let m = a / 2f64.powi(-24);
        assert_eq!(m.fract(), 0.0, "{x} is not an f16 subnormal");
        return sign | m as u16;
    }
    let mut e = 0i32;
    while a >= 2f64.powi(e + 1) {
        e += 1;
    }
    while a < 2f64.powi(e) {
        e -= 1;
    }
    let m = (a / 2f64.powi(e) - 1.0) * 1024.0;
    assert!(m.fract() == 0.0 && (-14..=15).contains(&e), "{x} is not exact in f16");
    sign | (((e + 15) as u16) << 10) | m as u16
}

/// bfloat16 bits of `x`, which must be exactly representable: the top half of its f32 bits.
fn bf16_bits(x: f64) -> u16 {
    let b = (x as f32).to_bits();
    assert_eq!((x as f32) as f64, x, "{x} is not exact in f32");
    assert_eq!(b & 0xffff, 0, "{x} is not exact in bf16");
    (b >> 16) as u16
}

/// The raw little-endian bytes a tensor of `dtype` holding `values` has (f32 and f64 rounded from the
/// f64 values to nearest even, as the Python script does; bf16 and f16 must be exact).
fn bytes_of(dtype: DType, values: &[f64]) -> Vec<u8> {
    let mut out = Vec::new();
    for &v in values {
        match dtype {
            DType::F64 => out.extend(v.to_le_bytes()),
            DType::F32 => out.extend((v as f32).to_le_bytes()),
            DType::BF16 => out.extend(bf16_bits(v).to_le_bytes()),
            DType::F16 => out.extend(f16_bits(v).to_le_bytes()),
        }
    }
    out
}

fn ramp(n: usize, f: impl Fn(f64) -> f64) -> Vec<f64> {
    (0..n).map(|i| f(i as f64)).collect()
}

/// The fixture's tensors (name, dtype, shape, values), by the formulas of
/// `tests/fixtures/make_safetensors_fixture.py`.
fn fixture_expected() -> Vec<(&'static str, DType, Vec<usize>, Vec<f64>)> {
    let inf = f64::INFINITY;
    vec![
        ("blocks.0.attn.wq", DType::F32, vec![2, 3, 4], ramp(24, |i| (i - 11.0) / 7.0)),
        ("blocks.0.attn.bias", DType::F64, vec![5], ramp(5, |i| (i - 2.0) / 3.0)),
        ("emb.weight", DType::BF16, vec![4, 4], ramp(16, |i| (i - 8.0) * 0.375)),
        ("head.scale", DType::F16, vec![3, 2], ramp(6, |i| (i - 3.0) * 0.125 + i / 1024.0)),
        ("temperature", DType::F64, vec![], vec![0.5]),
        ("empty", DType::F32, vec![0, 3], vec![]),
        ("special.f64", DType::F64, vec![6], vec![0.0, -0.0, inf, -inf, f64::from_bits(1), f64::MAX]),
        ("special.f32", DType::F32, vec![6], vec![0.0, -0.0, inf, -inf, 2f64.powi(-149), f32::MAX as f64]),
        ("special.bf16", DType::BF16, vec![6], vec![0.0, -0.0, inf, -inf, 2f64.powi(-133), (2.0 - 2f64.powi(-7)) * 2f64.powi(127)]),
        ("special.f16", DType::F16, vec![6], vec![0.0, -0.0, inf, -inf, 2f64.powi(-24), 65504.0]),
    ]
}

#[test]
fn loads_the_python_fixture_with_names_shapes_and_exact_bits() {
    let p = load_safetensors(fixture("params_fixture.safetensors")).unwrap();
    let mut expected = fixture_expected();
    assert_eq!(p.len(), expected.len());
    assert_eq!(p.buffer_groups().count(), 0, "a foreign file has no buffer groups");
    for (name, dtype, shape, values) in &expected {
        let t = p.get(name).unwrap_or_else(|| panic!("missing {name}"));
        assert_eq!(t.dtype(), *dtype, "{name}");
        assert_eq!(t.dims(), &shape[..], "{name}");
        assert_eq!(t.device(), Device::Cpu);
        assert_eq!(t.as_bytes().unwrap(), &bytes_of(*dtype, values)[..], "{name}: bits differ");
        // The crate's own decoding agrees with the formula (exact for these values).
        let got = t.to_vec_f64();
        let want: Vec<f64> = values.iter().map(|&v| if *dtype == DType::F32 { v as f32 as f64 } else { v }).collect();
        assert_eq!(got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "{name}");
    }
    // No `metagrad.order` metadata: the order of the data, which the reference writer lays out by
    // dtype (f64, f32, bf16, f16), then by name.
    let rank = |d: DType| [DType::F64, DType::F32, DType::BF16, DType::F16].iter().position(|&x| x == d).unwrap();
    expected.sort_by(|a, b| rank(a.1).cmp(&rank(b.1)).then(a.0.cmp(b.0)));
    let order: Vec<&str> = expected.iter().map(|e| e.0).collect();
    assert_eq!(p.names().collect::<Vec<_>>(), order);
    assert_eq!(p.numel(), 24 + 5 + 16 + 6 + 1 + 4 * 6);
}

/// A collection over every dtype with awkward values (NaN payloads, −0, subnormals, infinities), a
/// scalar, an empty tensor and two buffer groups.
fn awkward_params() -> Params {
    let mut p = Params::new();
    let nan32 = f32::from_bits(0x7fc0_1234);
    let f32s = vec![1.5f32, -0.0, f32::from_bits(1), f32::INFINITY, nan32, -f32::NAN, 3.25];
    p.insert("layers.1.w", Tensor::from_vec(f32s, [7]).unwrap()).unwrap();
    let f64s: Vec<f64> = (0..12).map(|i| (i as f64 - 5.5) / 3.0).chain([f64::from_bits(0x7ff0_0000_dead_beef)]).collect();
    p.insert("layers.1.b", Tensor::from_vec(f64s, [13]).unwrap()).unwrap();
    p.insert("z.bf16", Tensor::from_bytes(&[0x80, 0x7f, 0xc1, 0x7f, 0x01, 0x80, 0x34, 0x12], DType::BF16, [2, 2]).unwrap()).unwrap();
    p.insert("a.f16", Tensor::from_bytes(&[0x00, 0x7c, 0x01, 0x7e, 0x00, 0x80], DType::F16, [3, 1]).unwrap()).unwrap();
    p.insert("scalar", Tensor::scalar(-2.0, DType::F64)).unwrap();
    p.insert("empty", Tensor::zeros([2, 0], DType::F32)).unwrap();
    p.add_buffers("adamw.m").unwrap();
    let v = p.iter().map(|(_, t)| t.affine(1.0, 1.0).unwrap_or_else(|_| t.clone())).collect();
    p.add_buffers_from("adamw.v", v).unwrap();
    p
}

fn assert_same(a: &Params, b: &Params) {
    let (sa, sb): (Vec<_>, Vec<_>) = (a.named_state().collect(), b.named_state().collect());
    assert_eq!(sa.iter().map(|x| &x.0).collect::<Vec<_>>(), sb.iter().map(|x| &x.0).collect::<Vec<_>>(), "names or order differ");
    for ((name, x), (_, y)) in sa.iter().zip(&sb) {
        assert!(x.bit_eq(y), "{name}: {x:?} vs {y:?}");
    }
    assert_eq!(a.buffer_groups().collect::<Vec<_>>(), b.buffer_groups().collect::<Vec<_>>());
}

#[test]
fn save_then_load_keeps_order_names_shapes_bits_and_buffers() {
    let p = awkward_params();
    let path = tmp("round_trip.safetensors");
    save_safetensors(&path, &p).unwrap();
    let q = load_safetensors(&path).unwrap();
    assert_same(&p, &q);
    assert_eq!(q.len(), 6);
    assert_eq!(q.index_of("adamw.v.z.bf16"), Some(2 * 6 + 2));
    assert!(q.buffer("adamw.m", "layers.1.b").is_some_and(|t| t.to_vec_f64().iter().all(|&x| x == 0.0)));
    // Saving over an existing file replaces it.
    let mut small = Params::new();
    small.insert("only", Tensor::ones([1], DType::F32)).unwrap();
    save_safetensors(&path, &small).unwrap();
    assert_same(&small, &load_safetensors(&path).unwrap());
    // An empty collection is a valid file too.
    save_safetensors(&path, &Params::new()).unwrap();
    assert!(load_safetensors(&path).unwrap().is_empty());
}

/// The listing `tests/fixtures/read_safetensors.py` prints for a file holding `p`.
fn python_listing(p: &Params) -> String {
    let mut lines: Vec<String> = p
        .named_state()
        .map(|(name, t)| {
            let dt = match t.dtype() {
                DType::F32 => "f32",
                DType::F64 => "f64",
                DType::BF16 => "bf16",
                DType::F16 => "f16",
            };
            let shape = t.dims().iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",");
            let hex: String = t.as_bytes().unwrap().iter().map(|b| format!("{b:02x}")).collect();
            format!("{name} {dt} {shape} {hex}")
        })
        .collect();
    lines.sort();
    lines.push(format!("order {}", p.named_state().map(|x| x.0).collect::<Vec<_>>().join(",")));
    let groups: Vec<&str> = p.buffer_groups().collect();
    if !groups.is_empty() {
        lines.push(format!("buffers {}", groups.join(",")));
    }
    lines.join("\n") + "\n"
}

#[test]
fn python_reads_files_metagrad_writes() {
    let Some(python) = std::env::var_os("METAGRAD_PYTHON") else {
        println!("skipped: set METAGRAD_PYTHON to a python with safetensors and torch (e.g. ~/.cache/metagrad-peers/bin/python)");
        return;
    };
    let p = awkward_params();
    let path = tmp("for_python.safetensors");
    save_safetensors(&path, &p).unwrap();
    let out = std::process::Command::new(python).arg(fixture("read_safetensors.py")).arg(&path).output().unwrap();
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), python_listing(&p));
}

#[test]
fn names_are_unique_hierarchical_and_come_before_buffers() {
    let mut p = Params::new();
    p.insert("blocks.0.attn.wq", Tensor::zeros([2, 2], DType::F32)).unwrap();
    let e = p.insert("blocks.0.attn.wq", Tensor::zeros([1], DType::F32)).unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }) && e.to_string().contains("duplicate name `blocks.0.attn.wq`"), "{e}");
    for bad in ["", "a..b", ".a", "a.", "a\nb", "__metadata__"] {
        assert!(p.insert(bad, Tensor::zeros([1], DType::F32)).is_err(), "{bad:?} accepted");
    }
    let mut block = Params::new();
    block.insert("w", Tensor::zeros([3], DType::F64)).unwrap();
    block.insert("b", Tensor::zeros([1], DType::F64)).unwrap();
    p.insert_prefixed("blocks.1", &block).unwrap();
    assert_eq!(p.names().collect::<Vec<_>>(), ["blocks.0.attn.wq", "blocks.1.w", "blocks.1.b"]);
    // A clash leaves the collection as it was.
    let e = p.insert_prefixed("blocks", &{
        let mut q = Params::new();
        q.insert("2.x", Tensor::zeros([1], DType::F64)).unwrap();
        q.insert("1.w", Tensor::zeros([1], DType::F64)).unwrap();
        q
    });
    assert!(e.unwrap_err().to_string().contains("`blocks.1.w`"));
    assert_eq!(p.len(), 3);
    assert_eq!(p.numel(), 4 + 3 + 1);

    p.add_buffers("sgd.momentum").unwrap();
    let e = p.insert("late", Tensor::zeros([1], DType::F32)).unwrap_err();
    assert!(e.to_string().contains("`late`") && e.to_string().contains("sgd.momentum"), "{e}");
    assert!(p.add_buffers("sgd.momentum").unwrap_err().to_string().contains("duplicate buffer group"));
    // A buffer name that a parameter has: `blocks` + `1.w` against the parameter `blocks.1.w`... is
    // only possible with a group named like a parameter prefix.
    let mut q = Params::new();
    q.insert("m.w", Tensor::zeros([1], DType::F32)).unwrap();
    q.insert("w", Tensor::zeros([1], DType::F32)).unwrap();
    assert!(q.add_buffers("m").unwrap_err().to_string().contains("duplicate name `m.w`"));
    assert_eq!(q.buffer_groups().count(), 0, "a failed add leaves no group");
    // Wrong buffers.
    let e = q.add_buffers_from("g", vec![Tensor::zeros([2], DType::F32), Tensor::zeros([1], DType::F32)]).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains("`g.m.w`"), "{e}");
    assert!(q.add_buffers_from("g", vec![]).is_err());
}

#[test]
fn the_flat_state_layout_maps_both_ways() {
    let mut p = Params::new();
    p.insert("fc1.w", Tensor::randn([4, 3], DType::F64, 1)).unwrap();
    p.insert("fc1.b", Tensor::zeros([3], DType::F64)).unwrap();
    p.insert("fc2.w", Tensor::randn([3, 2], DType::F64, 2)).unwrap();
    p.add_buffers("adamw.m").unwrap();
    p.add_buffers("adamw.v").unwrap();
    let state = p.to_state();
    assert_eq!(state.len(), 9);
    assert_eq!(p.state_len(), 9);
    let names: Vec<String> = (0..9).map(|i| p.name_of(i).unwrap()).collect();
    assert_eq!(
        names,
        ["fc1.w", "fc1.b", "fc2.w", "adamw.m.fc1.w", "adamw.m.fc1.b", "adamw.m.fc2.w", "adamw.v.fc1.w", "adamw.v.fc1.b", "adamw.v.fc2.w"]
    );
    assert_eq!(p.name_of(9), None);
    for (i, n) in names.iter().enumerate() {
        assert_eq!(p.index_of(n), Some(i));
        assert!(p.get(n).unwrap().bit_eq(&state[i]));
    }
    assert_eq!(p.named_state().map(|x| x.0).collect::<Vec<_>>(), names);
    let (params, groups) = p.split_state(&state).unwrap();
    assert_eq!(params.len(), 3);
    assert_eq!(groups.iter().map(|g| g.len()).collect::<Vec<_>>(), [3, 3]);
    assert!(groups[1][2].bit_eq(p.buffer("adamw.v", "fc2.w").unwrap()));
    assert!(p.split_state(&state[1..]).is_err());

    // from_state puts a new state under the names; a wrong length or shape is an error naming it.
    let doubled: Vec<Tensor> = state.iter().map(|t| t.affine(2.0, 0.0).unwrap()).collect();
    let q = Params::from_state(&p, &doubled).unwrap();
    assert!(q.get("adamw.m.fc1.b").unwrap().bit_eq(&doubled[4]));
    assert!(q.get("fc2.w").unwrap().bit_eq(&doubled[2]));
    assert_eq!(q.to_state().len(), 9);
    assert!(Params::from_state(&p, &doubled[..8]).is_err());
    let mut wrong = doubled.clone();
    wrong[7] = Tensor::zeros([4], DType::F64);
    let e = Params::from_state(&p, &wrong).unwrap_err();
    assert!(e.to_string().contains("state tensor 7 (`adamw.v.fc1.b`)"), "{e}");
    // The empty collection.
    let empty = Params::new();
    assert_eq!(empty.split_state::<Tensor>(&[]).unwrap().0.len(), 0);
    assert!(Params::from_state(&empty, &[]).unwrap().is_empty());
}

/// A run whose momentum buffer overflows at step 1: state [w, sgd.momentum.w].
struct Diverges;

impl Training for Diverges {
    fn steps(&self) -> usize {
        3
    }
    fn initial_state(&self) -> Result<Vec<Tensor>> {
        Ok(layout().to_state())
    }
    fn step(&self, _: &StepCtx, _: usize, s: &[Var], _: &[Var]) -> Result<Vec<Var>> {
        Ok(vec![s[0].clone(), s[1].affine(1e200, 0.0)?])
    }
    fn output(&self, s: &[Var]) -> Result<Var> {
        s[0].sum_all()
    }
}

fn layout() -> Params {
    let mut p = Params::new();
    p.insert("head.w", Tensor::ones([2], DType::F64)).unwrap();
    p.add_buffers_from("sgd.momentum", vec![Tensor::ones([2], DType::F64)]).unwrap();
    p
}

#[test]
fn replay_and_optimizer_errors_get_names() {
    let p = layout();
    let e = train(&Diverges, &[]).unwrap_err();
    assert!(matches!(e, Error::NonFinite { step: 1, .. }), "{e}");
    assert!(e.to_string().contains("state tensor 1"), "{e}");
    let named = p.annotate_error(e);
    assert!(matches!(named, Error::NonFinite { step: 1, .. }));
    assert!(named.to_string().contains("state tensor 1 (`sgd.momentum.head.w`)"), "{named}");
    // Annotating twice adds nothing; indices past the state are left alone.
    assert_eq!(p.annotate_error(named.clone()).to_string(), named.to_string());
    let far = Error::Invalid { op: "x", msg: "state tensor 12 and parameter 3".into() };
    assert_eq!(p.annotate_error(far.clone()), far);

    // The optimizers count the parameters they are given: `parameter 0`.
    let w = Var::constant(Tensor::ones([2], DType::F64));
    let sgd = Sgd { lr: scalar(0.1, &w), momentum: Some(scalar(0.9, &w)), weight_decay: scalar(0.0, &w), nesterov: false };
    let bad_buf = Var::constant(Tensor::ones([3], DType::F64));
    let e = sgd.step(std::slice::from_ref(&w), std::slice::from_ref(&w), &[bad_buf]).unwrap_err();
    let named = p.annotate_error(e);
    assert!(named.to_string().contains("parameter 0 (`head.w`)"), "{named}");

    // And the layout drives the optimizer: split the state, step, rebuild under the names.
    let state: Vec<Var> = p.to_state().into_iter().map(Var::constant).collect();
    let (params, bufs) = p.split_state(&state).unwrap();
    let grads = vec![Var::constant(Tensor::ones([2], DType::F64))];
    let (np, nb) = sgd.step(params, &grads, bufs[0]).unwrap();
    let next: Vec<Tensor> = np.iter().chain(&nb).map(|v| v.value().clone()).collect();
    let q = Params::from_state(&p, &next).unwrap();
    assert_eq!(q.get("sgd.momentum.head.w").unwrap().to_vec_f64(), [0.9 + 1.0, 0.9 + 1.0]);
}

#[test]
fn file_errors_name_the_op_and_path_and_keep_the_source() {
    // Missing file: the OS error.
    let missing = tmp("does_not_exist.safetensors");
    let e = load_safetensors(&missing).unwrap_err();
    assert!(matches!(e, Error::Io { op: "load_safetensors", .. }), "{e:?}");
    assert!(e.to_string().contains(&missing.display().to_string()), "{e}");
    assert_eq!(e.source().and_then(|s| s.downcast_ref::<std::io::Error>()).map(|x| x.kind()), Some(std::io::ErrorKind::NotFound));

    // Corrupt headers and truncated files: the safetensors crate's error.
    let good = std::fs::read(fixture("params_fixture.safetensors")).unwrap();
    let corrupt: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("short", vec![1, 2, 3]),
        ("huge_header_len", [u64::MAX.to_le_bytes().as_slice(), b"{}"].concat()),
        ("not_json", [8u64.to_le_bytes().as_slice(), b"not json"].concat()),
        ("truncated", good[..good.len() - 1].to_vec()),
        ("garbage_header", {
            let mut g = good.clone();
            g[8] = b'[';
            g
        }),
    ];
    for (name, bytes) in corrupt {
        let path = tmp(&format!("corrupt_{name}.safetensors"));
        std::fs::write(&path, bytes).unwrap();
        let e = load_safetensors(&path).unwrap_err();
        assert!(matches!(e, Error::Io { op: "load_safetensors", .. }), "{name}: {e:?}");
        assert!(e.to_string().contains(&path.display().to_string()), "{name}: {e}");
        assert!(e.source().is_some_and(|s| s.is::<safetensors::SafeTensorError>()), "{name}: {e:?}");
    }

    // A dtype the crate does not hold.
    let header = br#"{"steps":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}}"#;
    let bytes = [(header.len() as u64).to_le_bytes().as_slice(), header, &[0u8; 8]].concat();
    let path = tmp("i32.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let e = load_safetensors(&path).unwrap_err();
    assert!(matches!(e, Error::DType { op: "load_safetensors", .. }), "{e:?}");
    assert!(
        e.to_string().contains("`steps`") && e.to_string().contains("I32") && e.to_string().contains(&path.display().to_string()),
        "{e}"
    );

    // metagrad metadata that does not match the tensors.
    let header = br#"{"__metadata__":{"metagrad.order":"a\nb"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let bytes = [(header.len() as u64).to_le_bytes().as_slice(), header, &[0u8; 4]].concat();
    let path = tmp("bad_order.safetensors");
    std::fs::write(&path, bytes).unwrap();
    assert!(matches!(load_safetensors(&path).unwrap_err(), Error::Invalid { op: "load_safetensors", .. }));

    // Saving into a directory that does not exist.
    let path = tmp("no_such_dir").join("x.safetensors");
    let e = save_safetensors(&path, &awkward_params()).unwrap_err();
    assert!(matches!(e, Error::Io { op: "save_safetensors", .. }), "{e:?}");
    assert!(e.to_string().contains("no_such_dir"), "{e}");
    assert!(e.source().is_some(), "{e:?}");
}

#[test]
fn tensors_on_a_gpu_are_downloaded_for_saving() {
    let dev = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!("skipped: {e} (set METAGRAD_CUDA_EMULATOR=1 to use the kernel emulator)");
            return;
        }
    };
    let p = awkward_params();
    let on_gpu = p.to_device(dev).unwrap();
    assert!(on_gpu.get("layers.1.w").unwrap().is_cuda());
    let path = tmp("from_gpu.safetensors");
    save_safetensors(&path, &on_gpu).unwrap();
    assert_same(&p, &load_safetensors(&path).unwrap());
}

#[test]
fn debug_lists_names_shapes_and_dtypes() {
    let mut p = Params::new();
    p.insert("fc.w", Tensor::zeros([2, 3], DType::F32)).unwrap();
    p.add_buffers("sgd.momentum").unwrap();
    assert_eq!(format!("{p:?}"), r#"{"fc.w": [2, 3] f32 cpu, "sgd.momentum.fc.w": [2, 3] f32 cpu}"#);
}

/// `Adam::step_state` and `Sgd::step_state` on a whole named state: the same bits as `step` on the
/// slices split by hand, on the fused (untaped) path and the taped one; a gradient of the wrong
/// shape gives an error naming the parameter; a layout with the wrong buffer groups is refused
/// with their names.
#[test]
fn optimizers_step_a_named_state() {
    use metagrad::optim::Adam;
    let mut p = Params::new();
    p.insert("fc.w", Tensor::from_vec(vec![0.5f64, -1.0, 2.0, 0.25], [2, 2]).unwrap()).unwrap();
    p.insert("fc.b", Tensor::from_vec(vec![0.1f64, -0.2], [2]).unwrap()).unwrap();
    let mut adam_layout = p.clone();
    adam_layout.add_buffers("adamw.m").unwrap();
    adam_layout.add_buffers("adamw.v").unwrap();
    let grads = vec![
        Var::constant(Tensor::from_vec(vec![0.3f64, -0.1, 0.7, 0.2], [2, 2]).unwrap()),
        Var::constant(Tensor::from_vec(vec![-0.4f64, 0.9], [2]).unwrap()),
    ];
    let one = Var::constant(Tensor::ones([], DType::F64));
    let adam = Adam {
        lr: scalar(1e-2, &one),
        beta1: scalar(0.9, &one),
        beta2: scalar(0.99, &one),
        eps: 1e-8,
        eps_root: 0.0,
        weight_decay: scalar(0.1, &one),
        decoupled: true,
    };
    for taped in [false, true] {
        let tape = metagrad::Tape::new();
        // Two steps from a state whose moments are not zero.
        let mut state: Vec<Var> = adam_layout.to_state().into_iter().map(|t| if taped { tape.var(t) } else { Var::constant(t) }).collect();
        let mut by_hand = state.clone();
        for t in 0..2 {
            state = adam.step_state(t, &adam_layout, &state, &grads).unwrap();
            let (p, m, v) = adam.step(t, &by_hand[..2], &grads, &by_hand[2..4], &by_hand[4..]).unwrap();
            by_hand = p.into_iter().chain(m).chain(v).collect();
        }
        assert_eq!(state.len(), 6);
        for (a, b) in state.iter().zip(&by_hand) {
            assert!(a.value().bit_eq(b.value()), "taped {taped}");
        }
        assert!(state[5].value().to_vec_f64().iter().all(|&x| x > 0.0), "the second moments moved");
    }

    let state: Vec<Var> = adam_layout.to_state().into_iter().map(Var::constant).collect();
    let bad = vec![grads[0].clone(), Var::constant(Tensor::zeros([3], DType::F64))];
    let e = adam.step_state(0, &adam_layout, &state, &bad).unwrap_err().to_string();
    assert!(e.contains("parameter 1 (`fc.b`)") && e.contains("[3]"), "{e}");
    let e = adam.step_state(0, &p, &state[..2], &grads).unwrap_err().to_string();
    assert!(e.contains("adam") && e.contains("0 buffer groups") && e.contains("first and second moments"), "{e}");

    let mut sgd_layout = p.clone();
    sgd_layout.add_buffers("sgd.momentum").unwrap();
    let sgd = Sgd { lr: scalar(0.1, &one), momentum: Some(scalar(0.9, &one)), weight_decay: scalar(0.0, &one), nesterov: false };
    let s: Vec<Var> = sgd_layout.to_state().into_iter().map(Var::constant).collect();
    let new = sgd.step_state(&sgd_layout, &s, &grads).unwrap();
    let (np, nb) = sgd.step(&s[..2], &grads, &s[2..]).unwrap();
    assert!(new.iter().zip(np.iter().chain(&nb)).all(|(a, b)| a.value().bit_eq(b.value())));
    let e = sgd.step_state(&adam_layout, &adam_layout.to_state().into_iter().map(Var::constant).collect::<Vec<_>>(), &grads);
    let e = e.unwrap_err().to_string();
    assert!(e.contains("\"adamw.m\", \"adamw.v\"") && e.contains("momentum"), "{e}");
}
