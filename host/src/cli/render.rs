//! How `run`, `send` and `attach` show a pod's events on a terminal:
//! streamed text as it arrives, one line per tool call and per result, a
//! spinner while waiting (only when stderr is a terminal), or the raw JSON
//! lines with `--json`.

use std::io::{IsTerminal, Write};

use crate::agent::{Event, Outcome};
use crate::protocol::{PodEvent, WireEvent};

const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// Renders events to stdout (and the spinner and errors to stderr).
pub struct Renderer {
    json: bool,
    spinner: bool,
    waiting: bool,
    frame: usize,
    line_open: bool,
}

impl Renderer {
    /// A renderer; `json` prints raw event lines.
    pub fn new(json: bool) -> Renderer {
        Renderer { json, spinner: !json && std::io::stderr().is_terminal(), waiting: false, frame: 0, line_open: false }
    }

    /// Whether the spinner wants redrawing.
    pub fn spinning(&self) -> bool {
        self.spinner && self.waiting
    }

    /// Draws the next spinner frame.
    pub fn tick(&mut self) {
        if self.spinning() {
            self.frame = (self.frame + 1) % SPINNER.len();
            eprint!("\r{} working…", SPINNER[self.frame]);
            let _ = std::io::stderr().flush();
        }
    }

    fn stop_spinner(&mut self) {
        if self.spinning() {
            eprint!("\r\x1b[2K");
        }
        self.waiting = false;
    }

    fn end_line(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        if self.line_open {
            writeln!(out)?;
            self.line_open = false;
        }
        Ok(())
    }

    /// Shows one event; returns the outcome when it is a `run_end`.
    pub fn show(&mut self, event: &WireEvent) -> std::io::Result<Option<Outcome>> {
        let mut out = std::io::stdout().lock();
        if self.json {
            writeln!(out, "{}", event.to_line())?;
            out.flush()?;
            return Ok(match event {
                WireEvent::Pod(PodEvent::RunEnd { outcome }) => Some(*outcome),
                _ => None,
            });
        }
        match event {
            WireEvent::Agent(Event::TurnStart { .. }) => self.waiting = true,
            WireEvent::Agent(Event::TextDelta { text }) => {
                self.stop_spinner();
                write!(out, "{text}")?;
                self.line_open = !text.ends_with('\n');
            }
            WireEvent::Agent(Event::ToolCallDone { name, arguments, .. }) => {
                self.stop_spinner();
                self.end_line(&mut out)?;
                let shown = arguments
                    .values()
                    .find_map(|v| v.as_str())
                    .map(|s| crate::plugin::truncate(s, 80).replace('\n', " "))
                    .unwrap_or_default();
                writeln!(out, "⏺ {name}({shown})")?;
                self.waiting = true;
            }
            WireEvent::Agent(Event::ToolResult { is_error, summary, .. }) => {
                self.stop_spinner();
                let mark = if *is_error { "✗" } else { "⎿" };
                writeln!(out, "  {mark} {}", summary.lines().next().unwrap_or_default())?;
                self.waiting = true;
            }
            WireEvent::Pod(PodEvent::Notification { message }) => {
                self.stop_spinner();
                self.end_line(&mut out)?;
                writeln!(out, "[note] {message}")?;
            }
            WireEvent::Pod(PodEvent::Error { code, message, .. }) => {
                self.stop_spinner();
                self.end_line(&mut out)?;
                eprintln!(
                    "error ({}): {message}",
                    serde_json::to_value(code).unwrap_or_default().as_str().unwrap_or("")
                );
            }
            WireEvent::Pod(PodEvent::RunEnd { outcome }) => {
                self.stop_spinner();
                self.end_line(&mut out)?;
                if *outcome != Outcome::Finished {
                    writeln!(
                        out,
                        "[run ended: {}]",
                        serde_json::to_value(outcome).unwrap_or_default().as_str().unwrap_or("")
                    )?;
                }
                out.flush()?;
                return Ok(Some(*outcome));
            }
            _ => {}
        }
        out.flush()?;
        Ok(None)
    }
}

/// The exit code for a run's outcome.
pub fn exit_code(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Finished => 0,
        Outcome::Failed | Outcome::Interrupted => 1,
        Outcome::LimitReached => 3,
        Outcome::Paused => 4,
        Outcome::Cancelled => 130,
    }
}
