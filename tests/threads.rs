//! `use_calling_thread`: the calling thread becomes worker 0 of rayon's global pool, kernels give the
//! same bits as on the pool alone, and a second set-up is a clear error. (Its own test binary: the
//! global pool must not exist before the first test runs.)

use metagrad::{DType, Tensor};

#[test]
fn the_calling_thread_joins_the_pool_and_results_keep_their_bits() {
    // Computed on a separate pool first (the global one must not start yet).
    let other = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let (a, b, want) = other.install(|| {
        let a = Tensor::randn([300, 200], DType::F32, 1);
        let b = Tensor::randn([200, 170], DType::F32, 2);
        let c = a.matmul(&b).unwrap();
        (a, b, c)
    });
    metagrad::use_calling_thread().unwrap();
    let n = rayon::current_num_threads();
    if n > 1 {
        assert_eq!(rayon::current_thread_index(), Some(0), "the calling thread is worker 0 of {n}");
    }
    assert!(a.matmul(&b).unwrap().bit_eq(&want));
    match metagrad::use_calling_thread() {
        Err(metagrad::Error::Invalid { op, msg }) => assert!(op == "use_calling_thread" && msg.contains("first thing"), "{msg}"),
        other => panic!("a second set-up must be an error, got {other:?}"),
    }
}
