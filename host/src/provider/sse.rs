//! Server-sent events, decoded from the bytes of a response body with
//! bounded buffers.
//!
//! The format (WHATWG HTML, "server-sent events"): UTF-8 lines ending in LF,
//! CR or CRLF; `field: value` lines build an event, a blank line ends it;
//! lines starting with `:` are comments; `data` lines are joined with LF.
//! Only `event` and `data` matter to the providers, so `id` and `retry` are
//! ignored, as is a partial event when the body ends.
//!
//! The decoder reads each byte once. It keeps at most one unfinished line
//! and one unfinished event, each held to a byte cap: a line or event over
//! it is an error as soon as it is seen, so a server that sends a line
//! without end costs the cap, not the line. A line that is not UTF-8 is an
//! error as soon as it ends (a line end is ASCII, so no character can
//! straddle one).

use bytes::Bytes;

/// One server-sent event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field (empty when absent).
    pub event: String,
    /// The `data:` fields, joined with LF.
    pub data: String,
}

/// Why a body is not a usable event stream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line is not UTF-8.
    #[error("a line is not valid UTF-8")]
    Utf8,
    /// A line, or an event's data, is longer than the cap.
    #[error("an event is longer than {}", super::bytes_text(*.0))]
    TooLong(usize),
}

/// Turns chunks of a body into events: [`SseDecoder::push`] a chunk, then
/// call [`SseDecoder::next`] until it has no more events to give.
pub struct SseDecoder {
    max_bytes: usize,
    /// What is left of the last chunk.
    pending: Bytes,
    /// The current line, up to its end.
    line: Vec<u8>,
    /// The last line ended in CR, so an LF right after it ends nothing.
    after_cr: bool,
    /// A line has ended (so a byte-order mark is no longer expected).
    started: bool,
    event: String,
    data: String,
}

impl SseDecoder {
    /// A decoder that refuses lines and events longer than `max_bytes`.
    pub fn new(max_bytes: usize) -> SseDecoder {
        SseDecoder {
            max_bytes,
            pending: Bytes::new(),
            line: Vec::new(),
            after_cr: false,
            started: false,
            event: String::new(),
            data: String::new(),
        }
    }

    /// Takes the next chunk of the body. Call only once [`SseDecoder::next`]
    /// has returned `Ok(None)`, which means that it used up the last one.
    pub fn push(&mut self, chunk: Bytes) {
        debug_assert!(self.pending.is_empty(), "the previous chunk was not used up");
        self.pending = chunk;
    }

    /// The next complete event from the chunks pushed so far, or `None`
    /// when they hold no more.
    pub fn next(&mut self) -> Result<Option<SseEvent>, SseError> {
        while !self.pending.is_empty() {
            if std::mem::take(&mut self.after_cr) && self.pending[0] == b'\n' {
                self.pending = self.pending.slice(1..);
                continue;
            }
            match self.pending.iter().position(|b| *b == b'\n' || *b == b'\r') {
                None => {
                    let rest = std::mem::take(&mut self.pending);
                    self.extend_line(&rest)?;
                }
                Some(end) => {
                    let rest = self.pending.split_off(end + 1);
                    let line = std::mem::replace(&mut self.pending, rest);
                    self.after_cr = line[end] == b'\r';
                    self.extend_line(&line[..end])?;
                    if let Some(event) = self.end_line()? {
                        return Ok(Some(event));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Bytes held in the unfinished line and event (for tests).
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.line.len() + self.event.len() + self.data.len()
    }

    fn extend_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > self.max_bytes {
            return Err(SseError::TooLong(self.max_bytes));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    /// Handles a whole line; returns the event a blank line completes.
    fn end_line(&mut self) -> Result<Option<SseEvent>, SseError> {
        let mut line = std::str::from_utf8(&self.line).map_err(|_| SseError::Utf8)?;
        if !std::mem::replace(&mut self.started, true) {
            line = line.strip_prefix('\u{feff}').unwrap_or(line);
        }
        let event = if line.is_empty() {
            self.dispatch()
        } else {
            if !line.starts_with(':') {
                let (field, value) = match line.split_once(':') {
                    Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                    None => (line, ""),
                };
                match field {
                    "data" => {
                        if self.data.len() + value.len() + 1 > self.max_bytes {
                            return Err(SseError::TooLong(self.max_bytes));
                        }
                        self.data.push_str(value);
                        self.data.push('\n');
                    }
                    "event" => value.clone_into(&mut self.event),
                    _ => {}
                }
            }
            None
        };
        self.line.clear();
        Ok(event)
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = std::mem::take(&mut self.event);
        if self.data.is_empty() {
            return None;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop(); // the LF after the last data line
        Some(SseEvent { event, data })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Every event in `chunks`, or the first error.
    fn decode(max: usize, chunks: &[&[u8]]) -> Result<Vec<SseEvent>, SseError> {
        let mut decoder = SseDecoder::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            decoder.push(Bytes::copy_from_slice(chunk));
            while let Some(event) = decoder.next()? {
                out.push(event);
            }
        }
        Ok(out)
    }

    fn event(name: &str, data: &str) -> SseEvent {
        SseEvent { event: name.into(), data: data.into() }
    }

    #[test]
    fn fields_comments_and_multiline_data() {
        let body = b"\xef\xbb\xbf: a comment\nevent: add\ndata: 1\ndata:2\nid: 7\nretry: 10\n\ndata\n\ndata: x\nevent\n\n\n\ndata: partial";
        let events = decode(1024, &[body]).unwrap();
        assert_eq!(events, [event("add", "1\n2"), event("", ""), event("", "x")]);
    }

    #[test]
    fn lines_end_in_lf_cr_or_crlf_even_across_chunks() {
        let expected = [event("", "a"), event("", "b"), event("", "c")];
        assert_eq!(decode(64, &[b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"]).unwrap(), expected);
        assert_eq!(decode(64, &[b"data: a\r", b"\n\r", b"\ndata: b\r", b"\r", b"data: c\n", b"\n"]).unwrap(), expected);
    }

    #[test]
    fn invalid_utf8_is_an_error_as_soon_as_its_line_ends() {
        assert_eq!(decode(64, &[b"data: ok\n\n", b"data: \xff\xfe\n"]), Err(SseError::Utf8));
        // A character split across chunks is fine.
        assert_eq!(decode(64, &[b"data: \xc3", b"\xa9\n\n"]).unwrap(), [event("", "é")]);
    }

    #[test]
    fn a_line_past_the_cap_is_an_error_before_it_is_buffered() {
        let mut decoder = SseDecoder::new(1 << 20);
        decoder.push(Bytes::from_static(b"data: "));
        assert_eq!(decoder.next(), Ok(None));
        let chunk = Bytes::from(vec![b'a'; 64 << 10]);
        // 100 MiB without a newline: the error comes after 1 MiB.
        let mut pushed = 0;
        let error = loop {
            decoder.push(chunk.clone());
            pushed += chunk.len();
            assert!(pushed <= 100 << 20, "never gave up");
            match decoder.next() {
                Ok(None) => assert!(decoder.buffered() <= 1 << 20),
                Ok(Some(e)) => panic!("{e:?}"),
                Err(e) => break e,
            }
        };
        assert_eq!(error, SseError::TooLong(1 << 20));
        assert_eq!(error.to_string(), "an event is longer than 1 MiB");
        assert!(pushed <= (1 << 20) + chunk.len(), "{pushed}");
    }

    #[test]
    fn an_event_whose_data_lines_add_up_past_the_cap_is_an_error() {
        let line = format!("data: {}\n", "a".repeat(50));
        let body = line.repeat(3);
        assert_eq!(decode(100, &[body.as_bytes()]), Err(SseError::TooLong(100)));
        assert_eq!(decode(200, &[body.as_bytes(), b"\n"]).unwrap().len(), 1);
    }

    /// Bytes that look like an event stream more often than random ones.
    fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"data: ".to_vec()),
            Just(b"event: e\n".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b":".to_vec()),
            Just("\u{feff}".as_bytes().to_vec()),
            Just("é".as_bytes().to_vec()),
            "[a-z{}\":, ]{0,20}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..8),
        ];
        prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(crate::provider::testing::config())]

        /// However the body is cut into chunks, the decoder gives the same
        /// events (or the same error), and it never holds more than the cap.
        #[test]
        fn decoding_does_not_depend_on_chunk_boundaries(
            body in stream_bytes(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
            max in 1usize..64,
        ) {
            let whole = decode(max, &[&body]);
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([body.len()]) {
                chunks.push(&body[from..cut]);
                from = cut;
            }
            let mut decoder = SseDecoder::new(max);
            let mut pieces = Ok(Vec::new());
            'feed: for chunk in &chunks {
                decoder.push(Bytes::copy_from_slice(chunk));
                loop {
                    prop_assert!(decoder.buffered() <= 3 * max);
                    match decoder.next() {
                        Ok(Some(e)) => pieces.as_mut().unwrap().push(e),
                        Ok(None) => break,
                        Err(e) => { pieces = Err(e); break 'feed; }
                    }
                }
            }
            prop_assert_eq!(whole, pieces);
        }
    }
}
