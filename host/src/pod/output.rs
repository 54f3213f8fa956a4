//! The assistant text a pod has produced (the tail of it), which other pods
//! read without asking its controller: `ReadPodOutput` reads it with a
//! cursor per reader. (The pod's state is its lifecycle, published by the
//! controller; see [`crate::lifecycle`].)

use parking_lot::Mutex;

/// How much assistant text a pod keeps for its readers.
pub const KEPT_OUTPUT_BYTES: usize = 1 << 20;

/// The kept tail of a pod's assistant text.
#[derive(Debug, Default)]
pub struct OutputTail {
    output: Mutex<Output>,
}

#[derive(Debug, Default)]
struct Output {
    /// The kept tail of everything written.
    text: String,
    /// Bytes written before `text` starts.
    dropped: u64,
}

impl Output {
    fn end(&self) -> u64 {
        self.dropped + self.text.len() as u64
    }
}

impl OutputTail {
    /// Appends streamed assistant text.
    pub(super) fn push_text(&self, text: &str) {
        let mut output = self.output.lock();
        output.text.push_str(text);
        if output.text.len() > KEPT_OUTPUT_BYTES {
            let mut cut = output.text.len() - KEPT_OUTPUT_BYTES;
            while !output.text.is_char_boundary(cut) {
                cut += 1;
            }
            output.text.drain(..cut);
            output.dropped += cut as u64;
        }
    }

    /// Separates one assistant message from the next.
    pub(super) fn end_message(&self) {
        let ends_open = {
            let output = self.output.lock();
            !output.text.is_empty() && !output.text.ends_with("\n\n")
        };
        if ends_open {
            self.push_text("\n\n");
        }
    }

    /// Up to `max` bytes of text from `cursor` on (an offset into all text
    /// ever written): the text, how many bytes before it are gone, and the
    /// cursor for the next read.
    pub fn read(&self, cursor: u64, max: usize) -> (String, u64, u64) {
        let output = self.output.lock();
        let start = cursor.max(output.dropped);
        let dropped = start - cursor;
        let from = (start - output.dropped) as usize;
        let rest = &output.text[from.min(output.text.len())..];
        let mut take = rest.len().min(max);
        while !rest.is_char_boundary(take) {
            take -= 1;
        }
        (rest[..take].to_string(), dropped, start + take as u64)
    }

    /// Bytes written since `cursor`.
    pub fn unread(&self, cursor: u64) -> u64 {
        self.output.lock().end().saturating_sub(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_continue_where_the_last_one_ended_and_report_what_was_dropped() {
        let p = OutputTail::default();
        p.push_text("first ");
        p.push_text("run");
        p.end_message();
        let (text, dropped, cursor) = p.read(0, 100);
        assert_eq!((text.as_str(), dropped), ("first run\n\n", 0));
        p.push_text("héllo");
        let (text, _, next) = p.read(cursor, 2);
        assert_eq!(text, "h");
        assert_eq!(p.read(next, 100).0, "éllo");
        p.push_text(&"x".repeat(KEPT_OUTPUT_BYTES));
        let (text, dropped, _) = p.read(cursor, usize::MAX);
        assert_eq!(text.len(), KEPT_OUTPUT_BYTES);
        assert_eq!(dropped, "héllo".len() as u64);
    }
}
