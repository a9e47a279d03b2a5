//! What crosses into JavaScript: errors as `Error` objects named `TavError`, progress as
//! plain objects, options read from plain objects.

use js_sys::{Function, Object, Reflect};
use wasm_bindgen::prelude::*;

use tav_core::TavError;

/// A JS `Error` named `TavError` with `message`.
pub fn error(message: impl AsRef<str>) -> JsValue {
    let e = js_sys::Error::new(message.as_ref());
    e.set_name("TavError");
    e.into()
}

/// A core error as a JS error, allocation failures worded as what to reduce.
pub fn tav_error(e: TavError) -> JsValue {
    let text = e.to_string();
    let lower = text.to_lowercase();
    if lower.contains("allocate") || lower.contains("out of memory") {
        return error(format!(
            "out of GPU memory: reduce the number of frames or the size. Details: {text}"
        ));
    }
    error(text)
}

pub type JsResult<T> = Result<T, JsValue>;

pub fn set(object: &Object, key: &str, value: impl Into<JsValue>) {
    Reflect::set(object, &JsValue::from_str(key), &value.into()).expect("set on a plain object");
}

/// Calls `callback` (if any) with `{phase, step, total, loss?}`.
pub fn report(
    callback: &Option<Function>,
    phase: &str,
    step: usize,
    total: usize,
    loss: Option<f32>,
) {
    let Some(callback) = callback else {
        return;
    };
    let event = Object::new();
    set(&event, "phase", phase);
    set(&event, "step", step as u32);
    set(&event, "total", total as u32);
    if let Some(loss) = loss {
        set(&event, "loss", loss);
    }
    // A throwing callback must not abort the work.
    let _ = callback.call1(&JsValue::NULL, &event);
}

/// Reads options from a plain JS object (`undefined` reads as empty).
pub struct Options(JsValue);

impl Options {
    pub fn new(value: JsValue) -> Self {
        Self(value)
    }

    fn get(&self, key: &str) -> Option<JsValue> {
        if !self.0.is_object() {
            return None;
        }
        Reflect::get(&self.0, &JsValue::from_str(key))
            .ok()
            .filter(|v| !v.is_undefined() && !v.is_null())
    }

    pub fn number(&self, key: &str) -> JsResult<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| error(format!("option `{key}` must be a finite number"))),
        }
    }

    pub fn count(&self, key: &str, default: usize) -> JsResult<usize> {
        let Some(v) = self.number(key)? else {
            return Ok(default);
        };
        if !(0.0..=1e9).contains(&v) || v.fract() != 0.0 {
            return Err(error(format!(
                "option `{key}` must be a whole number from 0 to 1e9, got {v}"
            )));
        }
        Ok(v as usize)
    }

    /// A step count: a whole number from 1 to 1,000,000 (`default` when absent).
    pub fn steps(&self, key: &str, default: usize) -> JsResult<usize> {
        let v = self.count(key, default)?;
        if v == 0 || v > 1_000_000 {
            return Err(error(format!(
                "option `{key}` must be 1 to 1000000 steps, got {v}"
            )));
        }
        Ok(v)
    }

    pub fn function(&self, key: &str) -> Option<Function> {
        self.get(key).and_then(|v| v.dyn_into::<Function>().ok())
    }

    pub fn value(&self, key: &str) -> Option<JsValue> {
        self.get(key)
    }
}
