//! The training loop: data on the device once, shuffled index batches, Adam, evaluation, a
//! checkpoint and a metrics line after every epoch, resumable from the last complete epoch.

use std::time::Instant;

use tch::{Device, Kind, Reduction, Tensor};

use crate::dist::Group;
use crate::idx::{DataSet, Split};
use crate::model::{Adam, Masks, Net};
use crate::output::{EpochMetrics, OutputDir, Summary, CHECKPOINT, MODEL, SUMMARY};
use crate::Error;

/// Everything a training run needs, already checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub epochs: u32,
    pub batch_size: u32,
    pub lr: f64,
    pub seed: u64,
    pub device: Device,
    pub threads: i32,
    pub resume: bool,
    /// The convolutions' kind: `Float` or `BFloat16`.
    pub conv_kind: Kind,
}

/// "bf16" or "fp32", as `--precision` spells it.
pub fn precision_name(conv_kind: Kind) -> &'static str {
    if conv_kind == Kind::BFloat16 {
        "bf16"
    } else {
        "fp32"
    }
}

/// A split as device tensors: normalised images `[n,1,rows,cols]` and int64 labels.
#[derive(Debug)]
struct DeviceSplit {
    images: Tensor,
    labels: Tensor,
}

impl DeviceSplit {
    fn new(split: &Split, mean: f64, std: f64, device: Device) -> DeviceSplit {
        let n = split.len() as i64;
        let images = Tensor::from_slice(&split.images)
            .to_device(device)
            .to_kind(Kind::Float)
            .view([n, 1, split.rows as i64, split.cols as i64]);
        let images = (images / 255.0 - mean) / std;
        let labels = Tensor::from_slice(&split.labels)
            .to_device(device)
            .to_kind(Kind::Int64);
        DeviceSplit { images, labels }
    }

    fn len(&self) -> i64 {
        self.labels.size()[0]
    }
}

/// Mean and standard deviation of the training pixels in [0,1], computed exactly on the host
/// (integer sums), so that normalisation does not depend on the device or thread count.
pub fn pixel_stats(split: &Split) -> (f64, f64) {
    let (mut s, mut s2) = (0u64, 0u64);
    for &p in &split.images {
        s += p as u64;
        s2 += (p as u64) * (p as u64);
    }
    let n = split.images.len() as f64;
    let mean = s as f64 / n / 255.0;
    let var = (s2 as f64 / n / (255.0 * 255.0) - mean * mean).max(1e-12);
    (mean, var.sqrt())
}

/// The seed of epoch `epoch`'s shuffle and dropout: a mix of the run seed and the epoch, so that
/// a resumed run draws exactly what the uninterrupted one would have.
pub fn epoch_seed(seed: u64, epoch: u32) -> i64 {
    let mut z = seed ^ (u64::from(epoch)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

/// Trains, writing checkpoints, metrics, the model and the summary into `out`.
/// `on_epoch` receives each epoch's metrics (the binary prints them).
///
/// With a `group` of several ranks, every rank holds the same weights: rank 0's initial (or
/// resumed) state is broadcast, each global batch of `batch_size` images is split across the
/// ranks in rank order, and the gradients are summed in one flat all-reduce per step, each rank's
/// loss being its images' share of the global batch mean. Only rank 0 has an `out` and writes.
pub fn train(
    data: &DataSet,
    cfg: &Config,
    out: Option<&OutputDir>,
    group: &Group,
    mut on_epoch: impl FnMut(&EpochMetrics),
) -> Result<Summary, Error> {
    let (rows, cols) = (data.train.rows as i64, data.train.cols as i64);
    let (mean, std) = pixel_stats(&data.train);
    let train = DeviceSplit::new(&data.train, mean, std, cfg.device);
    let test = DeviceSplit::new(&data.test, mean, std, cfg.device);

    tch::manual_seed(epoch_seed(cfg.seed, 0));
    let net = Net::new(rows, cols, cfg.device).conv_kind(cfg.conv_kind);
    let mut opt = Adam::new(&net, cfg.lr);

    let mut first_epoch = 1;
    let mut history = Vec::new();
    if let (true, Some(out)) = (cfg.resume, out) {
        if let Some(done) = load_checkpoint(out, cfg, &net, &mut opt)? {
            first_epoch = done + 1;
            history = out.read_metrics(done)?;
        }
    }
    if group.world() > 1 {
        // Rank 0's weights, optimizer state and place in the run, on every rank.
        let mut state = Tensor::from_slice(&[first_epoch as i64, opt.step]);
        group.broadcast_from_leader(&mut state, "broadcasting the run's position")?;
        first_epoch = state.int64_value(&[0]) as u32;
        opt.step = state.int64_value(&[1]);
        for (t, what) in [
            (&net.flat, "broadcasting the initial parameters"),
            (&opt.exp_avg, "broadcasting Adam's first moments"),
            (&opt.exp_avg_sq, "broadcasting Adam's second moments"),
        ] {
            group.broadcast_from_leader(&mut t.shallow_clone(), what)?;
        }
    }

    let device_name = crate::device::name(cfg.device);
    for epoch in first_epoch..=cfg.epochs {
        let start = Instant::now();
        tch::manual_seed(epoch_seed(cfg.seed, epoch));
        let train_loss = run_epoch(&net, &mut opt, &train, cfg.batch_size as i64, group, epoch)?;
        if let Device::Cuda(i) = cfg.device {
            tch::Cuda::synchronize(i as i64);
        }
        let train_seconds = start.elapsed().as_secs_f64();
        let (test_loss, test_accuracy) = evaluate(&net, &test, group)?;
        let m = EpochMetrics {
            epoch,
            train_loss,
            test_loss,
            test_accuracy,
            seconds: start.elapsed().as_secs_f64(),
            train_seconds,
            images_per_second: train.len() as f64 / train_seconds,
            device: device_name.clone(),
        };
        history.push(m.clone());
        if let Some(out) = out {
            // Metrics first: a run killed between the two resumes from the previous checkpoint,
            // repeats this epoch and writes its line again. The other order lost the epoch's
            // line for good when the kill fell between them (a resumed run then ended with the
            // previous epoch's summary).
            out.write_metrics(&history)?;
            save_checkpoint(out, cfg, &net, &opt, epoch)?;
            on_epoch(&m);
        }
    }

    let Some(out) = out else {
        // Ranks other than 0 write nothing; they report what every rank computed alike.
        return Ok(summary_of(
            data,
            cfg,
            &net,
            history.last(),
            history.iter().map(|m| m.train_seconds).sum(),
            format!("(rank {}: rank 0 writes the model)", group.rank()),
        ));
    };
    let last = history.last().cloned().ok_or_else(|| Error::Output {
        path: out.path(CHECKPOINT),
        problem:
            "checkpoint without metrics.jsonl; remove the directory or choose another --output"
                .into(),
    })?;
    let tmp = out.temp_path(MODEL);
    Tensor::write_safetensors(&net.named_params(), &tmp)
        .map_err(|e| Error::torch("writing the model", e))?;
    out.commit(MODEL)?;
    let summary = summary_of(
        data,
        cfg,
        &net,
        Some(&last),
        history.iter().map(|m| m.train_seconds).sum(),
        out.path(MODEL).display().to_string(),
    );
    let json = serde_json::to_string_pretty(&summary).expect("summary serialises");
    out.write(SUMMARY, json.as_bytes())?;
    Ok(summary)
}

/// The run's summary from its last epoch's metrics (none: NaN, for a rank other than 0 that
/// resumed a finished run) and where the model went.
fn summary_of(
    data: &DataSet,
    cfg: &Config,
    net: &Net,
    last: Option<&EpochMetrics>,
    train_seconds: f64,
    model: String,
) -> Summary {
    let nan = f64::NAN;
    Summary {
        epochs: cfg.epochs,
        test_accuracy: last.map_or(nan, |m| m.test_accuracy),
        test_loss: last.map_or(nan, |m| m.test_loss),
        train_loss: last.map_or(nan, |m| m.train_loss),
        train_images: data.train.len(),
        test_images: data.test.len(),
        image_shape: [data.train.rows, data.train.cols],
        parameters: net.numel(),
        batch_size: cfg.batch_size,
        lr: cfg.lr,
        seed: cfg.seed,
        device: crate::device::name(cfg.device),
        precision: precision_name(cfg.conv_kind).into(),
        threads: cfg.threads,
        train_seconds,
        model,
    }
}

/// The part of `0..n` that rank `rank` of `world` takes: contiguous, in rank order, sizes
/// differing by at most one.
pub fn shard(n: i64, rank: usize, world: usize) -> (i64, i64) {
    let (r, w) = (rank as i64, world as i64);
    let lo = n * r / w;
    (lo, n * (r + 1) / w - lo)
}

/// One pass over the training set; returns the mean training loss. The only host syncs are the
/// all-reduces (none alone) and the final read of the accumulated loss.
fn run_epoch(
    net: &Net,
    opt: &mut Adam,
    train: &DeviceSplit,
    batch: i64,
    group: &Group,
    epoch: u32,
) -> Result<f64, Error> {
    let n = train.len();
    let device = train.images.device();
    let perm = Tensor::randperm(n, (Kind::Int64, device));
    let mut loss_sum = Tensor::zeros([], (Kind::Float, device));
    let mut start = 0;
    let mut step = 0;
    while start < n {
        let len = batch.min(n - start);
        // Every rank draws the whole batch's masks, so the generator moves alike everywhere.
        let masks = Masks::draw(net, len, device);
        let (lo, mine) = shard(len, group.rank(), group.world());
        let mut grad = if mine > 0 {
            let idx = perm.narrow(0, start + lo, mine);
            let xs = train.images.index_select(0, &idx);
            let ys = train.labels.index_select(0, &idx);
            let sum = net
                .forward(&xs, Some(&masks.rows(lo, mine)))
                .cross_entropy_loss::<Tensor>(&ys, None, Reduction::Sum, -100, 0.0);
            net.zero_grad();
            // This rank's images' share of the global batch's mean loss.
            (&sum / len as f64).backward();
            tch::no_grad(|| loss_sum += sum.detach());
            net.flat_grad()
        } else {
            net.flat.zeros_like()
        };
        step += 1;
        group.all_reduce_sum(
            &mut grad,
            &format!("the gradient all-reduce of epoch {epoch}, step {step}"),
        )?;
        opt.step_with(net, &grad);
        start += len;
    }
    let mut total = loss_sum.to_kind(Kind::Double);
    group.all_reduce_sum(
        &mut total,
        &format!("summing epoch {epoch}'s training loss"),
    )?;
    Ok(total.double_value(&[]) / n as f64)
}

/// Mean loss and accuracy over the test set, each rank taking its shard.
fn evaluate(net: &Net, test: &DeviceSplit, group: &Group) -> Result<(f64, f64), Error> {
    let n = test.len();
    let (lo, mine) = shard(n, group.rank(), group.world());
    let (loss, correct) = tch::no_grad(|| {
        let device = test.images.device();
        let mut loss = Tensor::zeros([], (Kind::Float, device));
        let mut correct = Tensor::zeros([], (Kind::Int64, device));
        let mut start = lo;
        while start < lo + mine {
            let len = 1000.min(lo + mine - start);
            let logits = net.forward(&test.images.narrow(0, start, len), None);
            let ys = test.labels.narrow(0, start, len);
            loss += logits.cross_entropy_loss::<Tensor>(&ys, None, Reduction::Sum, -100, 0.0);
            correct += logits.argmax(-1, false).eq_tensor(&ys).sum(Kind::Int64);
            start += len;
        }
        (loss.double_value(&[]), correct.int64_value(&[]))
    });
    let mut totals = Tensor::from_slice(&[loss, correct as f64]);
    group.all_reduce_sum(&mut totals, "summing the test metrics")?;
    Ok((
        totals.double_value(&[0]) / n as f64,
        totals.double_value(&[1]) / n as f64,
    ))
}

fn save_checkpoint(
    out: &OutputDir,
    cfg: &Config,
    net: &Net,
    opt: &Adam,
    epoch: u32,
) -> Result<(), Error> {
    let scalar = |v: i64| Tensor::from_slice(&[v]);
    let tensors = [
        ("flat", net.flat.to_device(Device::Cpu)),
        ("exp_avg", opt.exp_avg.to_device(Device::Cpu)),
        ("exp_avg_sq", opt.exp_avg_sq.to_device(Device::Cpu)),
        ("meta.epoch", scalar(epoch as i64)),
        ("meta.step", scalar(opt.step)),
        ("meta.seed", scalar(cfg.seed as i64)),
    ];
    let tmp = out.temp_path(CHECKPOINT);
    Tensor::write_safetensors(&tensors, &tmp)
        .map_err(|e| Error::torch("writing the checkpoint", e))?;
    out.commit(CHECKPOINT)
}

/// Restores weights and optimizer state; returns the last completed epoch, or `None` when the
/// directory holds no checkpoint.
fn load_checkpoint(
    out: &OutputDir,
    cfg: &Config,
    net: &Net,
    opt: &mut Adam,
) -> Result<Option<u32>, Error> {
    let path = out.path(CHECKPOINT);
    if !path.exists() {
        return Ok(None);
    }
    let bad = |problem: String| Error::Checkpoint {
        path: path.clone(),
        problem,
    };
    let tensors = Tensor::read_safetensors(&path).map_err(|e| bad(e.to_string()))?;
    let get = |name: &str| {
        tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| bad(format!("no tensor `{name}`")))
    };
    let seed = get("meta.seed")?.int64_value(&[0]) as u64;
    if seed != cfg.seed {
        return Err(bad(format!(
            "it was made with --seed {seed}, not {}",
            cfg.seed
        )));
    }
    let flat = get("flat")?;
    if flat.size() != net.flat.size() {
        return Err(bad(format!(
            "its model has {} parameters, this data set's model {}",
            flat.size()[0],
            net.numel()
        )));
    }
    tch::no_grad(|| {
        net.flat.shallow_clone().copy_(flat);
        opt.exp_avg.copy_(get("exp_avg")?);
        opt.exp_avg_sq.copy_(get("exp_avg_sq")?);
        Ok::<_, Error>(())
    })?;
    opt.step = get("meta.step")?.int64_value(&[0]);
    Ok(Some(get("meta.epoch")?.int64_value(&[0]) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_seeds_differ_and_are_stable() {
        assert_ne!(epoch_seed(42, 1), epoch_seed(42, 2));
        assert_ne!(epoch_seed(42, 1), epoch_seed(43, 1));
        assert_eq!(epoch_seed(42, 1), epoch_seed(42, 1));
        assert!(epoch_seed(u64::MAX, u32::MAX) >= 0);
    }

    #[test]
    fn shards_cover_the_batch_in_rank_order() {
        for (n, w) in [(128, 2), (127, 2), (10, 3), (1, 2), (5, 1)] {
            let mut next = 0;
            for r in 0..w {
                let (lo, len) = shard(n, r, w);
                assert_eq!(lo, next, "n {n} w {w} r {r}");
                assert!(len >= n / w as i64 && len <= n / w as i64 + 1);
                next = lo + len;
            }
            assert_eq!(next, n);
        }
    }

    #[test]
    fn pixel_stats_are_exact() {
        let s = Split {
            images: vec![0, 255, 0, 255],
            labels: vec![0],
            rows: 2,
            cols: 2,
        };
        let (m, sd) = pixel_stats(&s);
        assert!(
            (m - 0.5).abs() < 1e-12 && (sd - 0.5).abs() < 1e-9,
            "{m} {sd}"
        );
    }
}
