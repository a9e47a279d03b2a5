//! Parameter counts of the inflated UNet, from shapes alone (nothing is allocated).

use tav_core::config::UNetConfig;
use tav_core::params::unet_param_counts;
use tav_tests::{device, golden_dirs};

#[test]
fn sd_v1_5_counts_match_the_reference() {
    let counts = unet_param_counts(&UNetConfig::sd_v1_5(), &device()).unwrap();
    println!("{counts:?}");
    assert_eq!(counts.total, 909_120_004);
    assert_eq!(counts.from_2d, 859_520_964);
    assert_eq!(counts.temporal, 49_599_040);
    assert_eq!(counts.trainable, 74_354_880);
}

#[test]
fn golden_trainable_counts_match() {
    for dir in golden_dirs() {
        let text = std::fs::read_to_string(dir.join("model/unet/config.json")).unwrap();
        let cfg: UNetConfig = serde_json::from_str(&text).unwrap();
        let counts = unet_param_counts(&cfg, &device()).unwrap();
        let cases: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap())
                .unwrap();
        if let Some(expected) = cases["train.trainable_count"].as_u64() {
            assert_eq!(counts.trainable as u64, expected, "{}", dir.display());
        }
    }
}
