//! Progress of long work, reported as events to a callback: the command line draws bars,
//! the web page calls JavaScript.

/// The phases of the job, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Pretraining the toy world's VAE.
    PretrainVae,
    /// Pretraining the toy world's text encoder and UNet.
    PretrainUnet,
    Encode,
    Tune,
    Invert,
    Sample,
    Decode,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::PretrainVae => "pretrain-vae",
            Phase::PretrainUnet => "pretrain-unet",
            Phase::Encode => "encode",
            Phase::Tune => "tune",
            Phase::Invert => "invert",
            Phase::Sample => "sample",
            Phase::Decode => "decode",
        }
    }
}

/// `step` of `total` of `phase` is done; tuning steps carry their loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    pub phase: Phase,
    pub step: usize,
    pub total: usize,
    pub loss: Option<f32>,
}

/// Where events go.
pub type Progress<'a> = &'a mut dyn FnMut(Event);

/// A callback that ignores every event.
pub fn silent(_: Event) {}
