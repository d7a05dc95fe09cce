//! The job's charges, its inference thread and where a model is hashed.

use super::*;
use crate::nn::tensor::ElementType;
use crate::nn::{MAX_STOPPED_THREADS, MAX_TENSOR_RANK, NnConfig};
use std::sync::atomic::AtomicU64;

fn tensor(dims: Vec<u32>, ty: ElementType, bytes: usize) -> TensorData {
    TensorData {
        dims,
        ty,
        data: vec![0; bytes].into(),
    }
}

/// A tensor is charged for all it holds, its dimensions too; one of a rank past the cap
/// (32 M dimensions would be 128 MiB of the host's, charged nothing) or whose data is not
/// what its dimensions need is refused, and nothing of it is held.
#[test]
fn a_tensor_is_checked_and_charged_for_what_it_holds() {
    let service = NnService::new(
        NnConfig {
            job_memory: 1 << 20,
            ..NnConfig::default()
        },
        1,
    );
    let job = service.job();
    let refused = [
        ("huge rank", tensor(vec![1; 1 << 20], ElementType::U8, 1)),
        (
            "rank past the cap",
            tensor(vec![1; MAX_TENSOR_RANK + 1], ElementType::U8, 1),
        ),
        ("short", tensor(vec![2, 3], ElementType::F32, 23)),
        ("long", tensor(vec![2, 3], ElementType::F32, 25)),
        ("overflow", tensor(vec![u32::MAX; 3], ElementType::I64, 0)),
    ];
    for (what, t) in refused {
        let e = job.tensor(t).err().expect(what);
        assert!(e.starts_with("wasi-nn tensor: "), "{what}: {e}");
        assert!(e.len() < 512, "{what}: {} bytes", e.len());
        assert_eq!((job.held(), service.worker.used()), (0, 0), "{what}");
    }
    let t = job
        .tensor(tensor(vec![2, 3], ElementType::F32, 24))
        .unwrap();
    assert_eq!(job.held(), 24 + 2 * 4, "data and dimensions");
    let deep = job
        .tensor(tensor(vec![1; MAX_TENSOR_RANK], ElementType::U8, 1))
        .unwrap();
    assert_eq!(job.held(), 32 + 1 + 4 * MAX_TENSOR_RANK as u64);
    assert_eq!(service.worker.used(), job.held());
    drop((t, deep));
    assert_eq!((job.held(), service.worker.used()), (0, 0));
    // Past the job's cap: refused, nothing held.
    assert!(
        job.tensor(tensor(vec![1 << 20], ElementType::U8, 1 << 20))
            .is_err()
    );
    assert_eq!(job.held(), 0);
}

/// A model's charges are taken before it is read and come back when it is not loaded.
#[test]
fn a_models_charges_are_taken_before_it_is_read() {
    let service = NnService::new(
        NnConfig {
            job_memory: 100,
            ..NnConfig::default()
        },
        1,
    );
    let job = service.job();
    let held = job.charge_model(40).unwrap();
    assert_eq!((job.held(), service.worker.used()), (80, 80));
    let e = job.charge_model(11).err().unwrap();
    assert_eq!(e.code, ErrorCode::TooLarge);
    assert!(e.message.contains("job"), "{}", e.message);
    assert_eq!((job.held(), service.worker.used()), (80, 80));
    drop(held);
    assert_eq!((job.held(), service.worker.used()), (0, 0));
    assert!(job.charge_model(u64::MAX).is_err(), "no overflow");
}

/// A worker whose ONNX Runtime library passes the start-up check (it is not loaded until
/// a graph is built, which these tests never reach).
fn served(dir: &std::path::Path, config: NnConfig) -> Arc<NnService> {
    let lib = dir.join("libonnxruntime.so");
    std::fs::write(&lib, b"\x7fELF\x02\x01\x01\0 OrtGetApiBase\0").unwrap();
    NnService::new(
        NnConfig {
            ort_dylib: Some(lib),
            ..config
        },
        1,
    )
}

/// A model is hashed on the job's inference thread, not in the async runtime's poll: on a
/// one-thread runtime, with that inference thread held busy until a ticker task has run
/// `TICKS` times, a load whose bytes do not hash to what their key names can only end
/// after those ticks. Hashing in the poll would end it at once, before the ticker ever
/// ran. Nothing here depends on the machine's speed: the order is forced.
#[tokio::test(flavor = "current_thread")]
async fn models_are_hashed_on_the_inference_thread() {
    const TICKS: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let service = served(dir.path(), NnConfig::default());
    let mut job = service.job();
    job.served().unwrap();
    job.on_thread(|| ()).await.unwrap();
    let (release, blocked) = std::sync::mpsc::channel::<()>();
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let thread = job.thread.as_ref().unwrap();
    tokio::select! {
        biased;
        _ = started => {}
        _ = thread.run(move || {
            let _ = started_tx.send(());
            let _ = blocked.recv();
        }) => unreachable!("blocked until released"),
    }
    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            while ticks.fetch_add(1, Ordering::SeqCst) + 1 < TICKS {
                tokio::task::yield_now().await;
            }
            release.send(()).unwrap();
        }
    });
    let charged = job.charge_model(16 << 20).unwrap();
    let r = job
        .load(vec![7; 16 << 20], Some([0; 32]), Some(charged))
        .await;
    assert_eq!(
        ticks.load(Ordering::SeqCst),
        TICKS,
        "the load ended before the ticker ran"
    );
    ticker.await.unwrap();
    let e = r.err().expect("another sha256");
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{}", e.message);
    assert_eq!(
        (job.held(), service.worker.used()),
        (0, 0),
        "the model's charges given back"
    );
}

#[tokio::test]
async fn a_stopped_call_holds_its_charges_until_it_ends() {
    let service = NnService::new(NnConfig::default(), 1);
    let mut job = service.job();
    let job_budget = job.budget.clone();
    let charges = job.charge(100).unwrap();
    let (release, blocked) = std::sync::mpsc::channel::<()>();
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let call = tokio::spawn(async move {
        job.on_thread_holding(charges, move || {
            let _ = started_tx.send(());
            let _ = blocked.recv();
        })
        .await
        .map(|_| ())
    });
    started.await.unwrap();
    // The run stops mid-call: its waiting future and its job are dropped.
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    assert_eq!(
        service.worker.used(),
        100,
        "the worker's bytes held while it runs"
    );
    assert_eq!(job_budget.used(), 100, "the job's too");
    assert_eq!(service.threads.live(), 1, "its thread still running");
    release.send(()).unwrap();
    service.threads.wait_live(0);
    assert_eq!(service.worker.used(), 0, "given back once the call ended");
    assert_eq!(job_budget.used(), 0);
}

#[tokio::test]
async fn a_call_past_the_thread_bound_is_a_runtime_error_for_the_task() {
    let slots = 2;
    let service = NnService::new(NnConfig::default(), slots);
    let held: Vec<_> = (0..slots + MAX_STOPPED_THREADS)
        .map(|_| service.threads.take().unwrap())
        .collect();
    let mut job = service.job();
    let e = job.on_thread(|| ()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::RuntimeError);
    assert!(
        e.message.contains("inference threads busy"),
        "{}",
        e.message
    );
    // A thread that ends makes room for the next call.
    drop(held);
    service.threads.wait_live(0);
    assert!(job.on_thread(|| ()).await.is_ok());
}
