//! What the user sees while tav works: progress bars with ETA (live loss while tuning), or
//! nothing (`--quiet`), or JSON lines (`--json`); every event also goes to a log file.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use tav_core::progress::{Event, Phase};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bars,
    Quiet,
    Json,
}

pub struct Ui {
    mode: Mode,
    bar: Option<(Phase, ProgressBar)>,
    log: Option<File>,
    /// Records made before the log file exists (it is created once the inputs are accepted).
    pending: Vec<serde_json::Value>,
    /// When the command started: each progress record says how long since, so a phase's
    /// time can be read from the log (benches/peer_cpu.sh does).
    started: std::time::Instant,
}

impl Ui {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            bar: None,
            log: None,
            pending: Vec::new(),
            started: std::time::Instant::now(),
        }
    }

    /// Also append every event, as JSON lines, to `path`.
    pub fn log_to(&mut self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = File::options().create(true).append(true).open(path)?;
        for record in self.pending.drain(..) {
            writeln!(file, "{record}")?;
        }
        self.log = Some(file);
        Ok(())
    }

    /// A plain message (not shown with `--quiet`; a JSON record with `--json`). Control
    /// characters from user text (prompts, paths) are escaped on the terminal.
    pub fn say(&mut self, message: &str) {
        let shown = printable(message);
        let message = shown.as_str();
        let record = serde_json::json!({ "event": "message", "message": message });
        self.write_log(&record);
        match self.mode {
            Mode::Bars => match &self.bar {
                Some((_, bar)) => bar.println(message),
                None => eprintln!("{message}"),
            },
            Mode::Json => println!("{record}"),
            Mode::Quiet => {}
        }
    }

    /// A structured record (e.g. an output file written).
    pub fn record(&mut self, value: serde_json::Value) {
        self.write_log(&value);
        if self.mode == Mode::Json {
            println!("{value}");
        }
    }

    pub fn event(&mut self, e: Event) {
        let record = serde_json::json!({
            "event": "progress",
            "phase": e.phase.name(),
            "step": e.step,
            "total": e.total,
            "loss": e.loss,
            "elapsed_s": (self.started.elapsed().as_secs_f64() * 1e3).round() / 1e3,
        });
        self.write_log(&record);
        match self.mode {
            Mode::Json => println!("{record}"),
            Mode::Quiet => {}
            Mode::Bars => self.draw(e),
        }
    }

    fn draw(&mut self, e: Event) {
        let same = matches!(&self.bar, Some((p, _)) if *p == e.phase);
        if !same {
            self.finish();
            let bar = ProgressBar::new(e.total as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>7} [{bar:30}] {pos}/{len} {msg} (ETA {eta})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(e.phase.name());
            self.bar = Some((e.phase, bar));
        }
        let (_, bar) = self.bar.as_ref().expect("bar exists");
        bar.set_position(e.step as u64);
        if let Some(loss) = e.loss {
            bar.set_message(format!("loss {loss:.5}"));
        }
        if e.step >= e.total {
            self.finish();
        }
    }

    pub fn finish(&mut self) {
        if let Some((_, bar)) = self.bar.take() {
            bar.finish();
        }
    }

    fn write_log(&mut self, value: &serde_json::Value) {
        match &mut self.log {
            Some(f) => {
                let _ = writeln!(f, "{value}");
            }
            None => self.pending.push(value.clone()),
        }
    }
}

/// `text` safe to print on a terminal: control characters (ESC, BEL, carriage return…, which
/// a prompt or file name may carry) are shown as escapes such as `\u{1b}`; newlines and tabs
/// stay.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            printable("a \u{1b}[31mred\u{7} cat"),
            "a \\u{1b}[31mred\\u{7} cat"
        );
        assert_eq!(
            printable("two\nlines\tand tab, é 猫"),
            "two\nlines\tand tab, é 猫"
        );
        assert_eq!(printable("cr\rbs\u{8}del\u{7f}"), "cr\\rbs\\u{8}del\\u{7f}");
    }
}
