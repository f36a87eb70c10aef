//! The CNN (pytorch/examples MNIST shape: two 3x3 convolutions, max-pool, two linear layers)
//! with all parameters stored in one flat tensor, so that the Adam step is a handful of kernels
//! per batch whatever the number of layers, and weights and optimizer state are three flat
//! tensors that a checkpoint saves exactly.

use tch::{Device, Kind, Tensor};

/// Name and shape of one parameter, in PyTorch `state_dict` order and naming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: &'static str,
    pub shape: Vec<i64>,
    /// Fan-in for PyTorch's default initialisation bound `1/sqrt(fan_in)`.
    pub fan_in: i64,
}

impl ParamSpec {
    fn numel(&self) -> i64 {
        self.shape.iter().product()
    }
}

/// Parameter layout of the network for `rows`x`cols` single-channel images.
pub fn param_specs(rows: i64, cols: i64) -> Vec<ParamSpec> {
    let flat = 64 * ((rows - 4) / 2) * ((cols - 4) / 2);
    let p = |name, shape: &[i64], fan_in| ParamSpec {
        name,
        shape: shape.to_vec(),
        fan_in,
    };
    vec![
        p("conv1.weight", &[32, 1, 3, 3], 9),
        p("conv1.bias", &[32], 9),
        p("conv2.weight", &[64, 32, 3, 3], 32 * 9),
        p("conv2.bias", &[64], 32 * 9),
        p("fc1.weight", &[128, flat], flat),
        p("fc1.bias", &[128], flat),
        p("fc2.weight", &[10, 128], 128),
        p("fc2.bias", &[10], 128),
    ]
}

/// The network. Every parameter is a leaf tensor whose storage is a slice of one flat tensor:
/// autograd sees eight ordinary leaves (no slice-backward into a full-size zero buffer per
/// parameter), while the optimizer and the checkpoint see one tensor.
#[derive(Debug)]
pub struct Net {
    pub specs: Vec<ParamSpec>,
    /// All parameters, back to back; updated in place by [`Adam`].
    pub flat: Tensor,
    params: Vec<Tensor>,
    /// The kind the convolutions compute in: `Float`, or `BFloat16` (see [`Net::conv_kind`]).
    conv_kind: Kind,
}

impl Net {
    /// Smallest image side the two convolutions and the pool accept.
    pub const MIN_SIDE: usize = 6;

    /// A network initialised like PyTorch's `nn.Conv2d`/`nn.Linear` defaults:
    /// uniform in `±1/sqrt(fan_in)`, drawn from the global generator (seed it first).
    pub fn new(rows: i64, cols: i64, device: Device) -> Net {
        let specs = param_specs(rows, cols);
        let total = specs.iter().map(ParamSpec::numel).sum();
        let flat = Tensor::zeros([total], (Kind::Float, device));
        let mut params = Vec::with_capacity(specs.len());
        let mut offset = 0;
        for s in &specs {
            let mut p = flat.narrow(0, offset, s.numel()).view(s.shape.as_slice());
            let bound = 1.0 / (s.fan_in as f64).sqrt();
            let _ = p.uniform_(-bound, bound);
            params.push(p.detach().set_requires_grad(true));
            offset += s.numel();
        }
        Net {
            specs,
            flat,
            params,
            conv_kind: Kind::Float,
        }
    }

    /// Runs the convolutions in `kind` (`Float` or `BFloat16`): their inputs and weights are
    /// cast on the way in (autograd casts the gradients back), their output on the way out, so
    /// parameters, optimizer state, the linear layers and the loss stay fp32.
    pub fn conv_kind(mut self, kind: Kind) -> Net {
        self.conv_kind = kind;
        self
    }

    /// Number of scalar parameters.
    pub fn numel(&self) -> i64 {
        self.flat.numel() as i64
    }

    /// Parameter `i` (a leaf that shares storage with [`Net::flat`]).
    pub fn param(&self, i: usize) -> &Tensor {
        &self.params[i]
    }

    /// Logits for a batch of normalised images `[n, 1, rows, cols]`; `masks` (training) are
    /// the dropout masks of exactly these `n` images, `None` (evaluation) is no dropout.
    pub fn forward(&self, xs: &Tensor, masks: Option<&Masks>) -> Tensor {
        let p = &self.params;
        let k = self.conv_kind;
        // Channels-last weights (a copy of 18k numbers per step) make libtorch take oneDNN's
        // channels-last convolutions, whose outputs stay channels-last through the pool.
        let cl = |w: &Tensor| {
            w.to_kind(k)
                .permute([0, 2, 3, 1])
                .contiguous()
                .permute([0, 3, 1, 2])
        };
        // Convolution `i`: weight p[i], bias p[i + 1], stride 1, no padding.
        let conv = |x: Tensor, i: usize| {
            x.conv2d(
                &cl(&p[i]),
                Some(&p[i + 1].to_kind(k)),
                [1, 1],
                [0, 0],
                [1, 1],
                1,
            )
        };
        let drop = |x: Tensor, mask: Option<&Tensor>| match mask {
            Some(m) => x * m,
            None => x,
        };
        // relu(max_pool(x)) is max_pool(relu(x)) (relu is monotonic), on a quarter of the
        // elements; the first relu works in place on the convolution's fresh output.
        let features = conv(conv(xs.to_kind(k), 0).relu_(), 2)
            .max_pool2d_default(2)
            .relu_()
            .to_kind(Kind::Float)
            .flatten(1, -1);
        let hidden = drop(features, masks.map(|m| &m.features))
            .linear(&p[4], Some(&p[5]))
            .relu();
        drop(hidden, masks.map(|m| &m.hidden)).linear(&p[6], Some(&p[7]))
    }

    /// The gradients of all parameters as one flat tensor (one concatenation).
    pub fn flat_grad(&self) -> Tensor {
        let grads: Vec<Tensor> = self.params.iter().map(|p| p.grad().view(-1)).collect();
        Tensor::cat(&grads, 0)
    }

    /// Clears every parameter's gradient.
    pub fn zero_grad(&self) {
        for p in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// The parameters as named, contiguous tensors on the CPU (a PyTorch-style state dict).
    pub fn named_params(&self) -> Vec<(String, Tensor)> {
        self.specs
            .iter()
            .zip(&self.params)
            .map(|(s, p)| {
                (
                    s.name.to_owned(),
                    p.detach().to_device(Device::Cpu).contiguous(),
                )
            })
            .collect()
    }
}

/// Dropout masks (0, or 1/(1-p) for a kept unit) of a batch: p = 0.25 on the pooled features,
/// 0.5 on the hidden layer, as the pytorch/examples network. Drawn for a whole global batch from
/// the generator every rank seeded alike, then cut per rank ([`Masks::rows`]), so that N ranks
/// drop exactly the units one process would.
#[derive(Debug)]
pub struct Masks {
    pub features: Tensor,
    pub hidden: Tensor,
}

impl Masks {
    pub fn draw(net: &Net, n: i64, device: Device) -> Masks {
        let keep = |p: f64, units: i64| {
            let mut m = Tensor::empty([n, units], (Kind::Float, device));
            let _ = m.bernoulli_float_(1.0 - p);
            m *= 1.0 / (1.0 - p);
            m
        };
        Masks {
            features: keep(0.25, net.specs[4].shape[1]),
            hidden: keep(0.5, net.specs[6].shape[1]),
        }
    }

    /// The masks of images `start..start + len` of the batch.
    pub fn rows(&self, start: i64, len: i64) -> Masks {
        Masks {
            features: self.features.narrow(0, start, len),
            hidden: self.hidden.narrow(0, start, len),
        }
    }
}

/// Adam (Kingma & Ba, as `torch.optim.Adam` with default betas and eps, no weight decay) over
/// the flat parameter tensor.
#[derive(Debug)]
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Steps taken so far (bias correction depends on it).
    pub step: i64,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
}

impl Adam {
    pub fn new(net: &Net, lr: f64) -> Adam {
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            exp_avg: net.flat.zeros_like(),
            exp_avg_sq: net.flat.zeros_like(),
        }
    }

    /// One update from the gradients left by `backward`.
    pub fn step(&mut self, net: &Net) {
        self.step_with(net, &net.flat_grad());
    }

    /// One update from `g`, the flat gradient (all-reduced across ranks when there are several).
    pub fn step_with(&mut self, net: &Net, g: &Tensor) {
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2 = 1.0 - self.beta2.powi(self.step as i32);
        tch::no_grad(|| {
            let _ = self.exp_avg.lerp_(g, 1.0 - self.beta1);
            self.exp_avg_sq *= self.beta2;
            let _ = self.exp_avg_sq.addcmul_(&(g * (1.0 - self.beta2)), g);
            let mut denom = self.exp_avg_sq.sqrt();
            denom *= 1.0 / bc2.sqrt();
            denom += self.eps;
            let mut update = &self.exp_avg / &denom;
            update *= self.lr / bc1;
            let mut flat = net.flat.shallow_clone();
            flat -= update;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// libtorch's generator is global; tests that draw from it take turns.
    static RNG: Mutex<()> = Mutex::new(());

    #[test]
    fn layout_matches_pytorch_examples_net() {
        let _g = RNG.lock().unwrap();
        let specs = param_specs(28, 28);
        assert_eq!(specs[4].shape, vec![128, 9216]);
        let net = Net::new(28, 28, Device::Cpu);
        assert_eq!(net.numel(), 1_199_882); // the pytorch/examples MNIST Net
        let out = net.forward(
            &Tensor::zeros([3, 1, 28, 28], (Kind::Float, Device::Cpu)),
            None,
        );
        assert_eq!(out.size(), vec![3, 10]);
    }

    #[test]
    fn init_is_seeded_and_bounded() {
        let _g = RNG.lock().unwrap();
        tch::manual_seed(7);
        let a = Net::new(8, 8, Device::Cpu);
        tch::manual_seed(7);
        let b = Net::new(8, 8, Device::Cpu);
        assert!(a.flat.equal(&b.flat));
        let w = a.param(0);
        let max = w.abs().max().double_value(&[]);
        assert!(max <= 1.0 / 3.0 + 1e-6 && max > 0.2, "{max}");
    }

    #[test]
    fn adam_first_step_moves_each_weight_by_lr() {
        // With bias correction, Adam's first step is lr * sign(grad) (up to eps).
        let _g = RNG.lock().unwrap();
        tch::manual_seed(1);
        let net = Net::new(8, 8, Device::Cpu);
        let before = net.flat.detach().copy();
        let mut opt = Adam::new(&net, 0.01);
        net.zero_grad();
        let loss = (0..8)
            .map(|i| net.param(i).sum(Kind::Float))
            .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
        loss.backward();
        opt.step(&net);
        let moved = (&before - &net.flat).mean(Kind::Float).double_value(&[]);
        assert!((moved - 0.01).abs() < 1e-6, "{moved}");
    }

    #[test]
    fn bf16_convolutions_stay_close_to_fp32_and_the_gradients_fp32() {
        let _g = RNG.lock().unwrap();
        tch::manual_seed(3);
        let xs = Tensor::randn([16, 1, 12, 12], (Kind::Float, Device::Cpu));
        tch::manual_seed(5);
        let net = Net::new(12, 12, Device::Cpu);
        let fp32 = net.forward(&xs, None);
        let net = net.conv_kind(Kind::BFloat16);
        let bf16 = net.forward(&xs, None);
        assert_eq!(bf16.kind(), Kind::Float);
        let diff = (&fp32 - &bf16).abs().max().double_value(&[]);
        let scale = fp32.abs().max().double_value(&[]);
        // bfloat16 keeps 8 bits of mantissa: close, but not the same numbers.
        assert!(diff > 0.0 && diff < 0.05 * scale, "{diff} of {scale}");
        net.zero_grad();
        bf16.sum(Kind::Float).backward();
        for i in 0..8 {
            let g = net.param(i).grad();
            assert_eq!(g.kind(), Kind::Float, "parameter {i}");
            assert!(
                g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "parameter {i}"
            );
        }
    }
}
