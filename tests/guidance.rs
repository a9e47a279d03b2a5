//! Classifier-free guidance and its rescale: at 0 the reference's formula, at 1 the guided
//! prediction carries the conditional one's standard deviation, per batch item.

use burn::tensor::{Distribution, Tensor};
use tav_core::edit::Guidance;
use tav_tests::device;

fn std_of(x: Tensor<5>) -> Vec<f32> {
    let b = x.dims()[0];
    x.reshape([b as i32, -1])
        .var(1)
        .sqrt()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

fn max_diff(a: Tensor<5>, b: Tensor<5>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

#[test]
fn rescale_pulls_the_guided_prediction_back_to_the_conditional_scale() {
    let device = device();
    let uncond = Tensor::<5>::random([2, 4, 3, 5, 7], Distribution::Normal(0.0, 1.0), &device);
    // The second item's conditional prediction has a larger scale than the first's.
    let cond = Tensor::cat(
        vec![
            uncond.clone().narrow(0, 0, 1).mul_scalar(0.5),
            uncond.clone().narrow(0, 1, 1).mul_scalar(-1.5),
        ],
        0,
    );

    let plain = Guidance::from(7.5).combine(uncond.clone(), cond.clone());
    let reference = uncond.clone() + (cond.clone() - uncond.clone()).mul_scalar(7.5);
    assert!(
        max_diff(plain.clone(), reference) < 1e-5,
        "rescale 0 is the reference"
    );

    let full = Guidance {
        scale: 7.5,
        rescale: 1.0,
    }
    .combine(uncond.clone(), cond.clone());
    for (got, want) in std_of(full.clone()).iter().zip(std_of(cond.clone())) {
        assert!(
            (got - want).abs() < 1e-3 * want,
            "std {got} vs the conditional {want}"
        );
    }
    // Rescaling changes each item's scale, not its direction.
    let (full_std, plain_std) = (std_of(full.clone()), std_of(plain.clone()));
    for i in 0..2 {
        let scaled = plain
            .clone()
            .narrow(0, i, 1)
            .mul_scalar(full_std[i] / plain_std[i]);
        let diff = max_diff(full.clone().narrow(0, i, 1), scaled);
        assert!(
            diff < 1e-4 * full_std[i].max(1.0) * 10.0,
            "item {i}: {diff}"
        );
    }

    let half = Guidance {
        scale: 7.5,
        rescale: 0.5,
    }
    .combine(uncond, cond);
    let mixed = (full + plain).mul_scalar(0.5);
    assert!(max_diff(half, mixed) < 1e-4, "0.5 mixes the two halves");
}
