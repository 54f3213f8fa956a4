//! Numbered lines, the way Read and Edit show them, and Read's window over a
//! file fed to it a chunk at a time.
//!
//! Pure text work with no I/O, in one pass: `memchr` finds the line ends,
//! the lines outside the window are only counted, and one `String`
//! receives the output. A file is never held whole, so a Read touches
//! memory for its window, not for the file. The hot-path benchmark compiles
//! this same file natively as Read's baseline.

/// A line longer than this many characters is cut, so one minified line
/// cannot flood the output.
pub const MAX_LINE_CHARS: usize = 2000;

/// Lines numbered `   N<TAB>text`, joined by newlines.
pub struct Numbered {
    out: String,
    first: usize,
    next: usize,
}

impl Numbered {
    /// Numbering starts at `first` (1-based).
    pub fn new(first: usize) -> Numbered {
        Numbered { out: String::new(), first, next: first }
    }

    /// Adds one line (without its `\n`); a `\r` before the end is dropped,
    /// bytes that are not UTF-8 become U+FFFD, a long line is cut.
    pub fn push(&mut self, line: &[u8]) {
        if !self.out.is_empty() {
            self.out.push('\n');
        }
        push_number(&mut self.out, self.next);
        self.out.push('\t');
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match std::str::from_utf8(line) {
            Ok(text) => push_cut(&mut self.out, text),
            Err(_) => push_cut(&mut self.out, &String::from_utf8_lossy(line)),
        }
        self.next += 1;
    }

    /// Lines added so far.
    pub fn shown(&self) -> usize {
        self.next - self.first
    }

    /// The text.
    pub fn into_text(self) -> String {
        self.out
    }
}

/// `n` right-aligned in six columns, like `{:6}`.
fn push_number(out: &mut String, mut n: usize) {
    let mut digits = [b' '; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = at.min(digits.len() - 6);
    out.push_str(std::str::from_utf8(&digits[start..]).expect("ASCII digits and spaces"));
}

fn push_cut(out: &mut String, line: &str) {
    // A line of at most MAX_LINE_CHARS bytes has at most that many characters.
    if line.len() <= MAX_LINE_CHARS {
        out.push_str(line);
        return;
    }
    match line.char_indices().nth(MAX_LINE_CHARS) {
        Some((at, _)) => {
            out.push_str(&line[..at]);
            out.push_str(&format!("... [line cut: {} more bytes]", line.len() - at));
        }
        None => out.push_str(line),
    }
}

/// Lines `skip .. skip + take` (0-based) of a file fed in chunks, numbered,
/// and the number of lines in the whole file. A final newline ends the last
/// line rather than starting an empty one; an empty file has no lines.
pub struct Window {
    skip: usize,
    end: usize,
    /// Lines ended so far (the index of the line being read).
    line: usize,
    /// The part of a line in the window seen before its chunk ended.
    partial: Vec<u8>,
    /// The last byte fed in, if any.
    last: Option<u8>,
    shown: Numbered,
}

/// What a [`Window`] found.
pub struct Found {
    /// The numbered lines of the window.
    pub text: String,
    /// How many lines that is.
    pub shown: usize,
    /// Lines in the whole file.
    pub total: usize,
}

impl Window {
    pub fn new(skip: usize, take: usize) -> Window {
        Window {
            skip,
            end: skip.saturating_add(take),
            line: 0,
            partial: Vec::new(),
            last: None,
            shown: Numbered::new(skip + 1),
        }
    }

    fn wanted(&self) -> bool {
        self.line >= self.skip && self.line < self.end
    }

    /// The next bytes of the file.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        let Some(&last) = chunk.last() else { return };
        self.last = Some(last);
        while self.line < self.end {
            let Some(at) = memchr::memchr(b'\n', chunk) else {
                if self.wanted() {
                    self.partial.extend_from_slice(chunk);
                }
                return;
            };
            if self.wanted() {
                if self.partial.is_empty() {
                    self.shown.push(&chunk[..at]);
                } else {
                    self.partial.extend_from_slice(&chunk[..at]);
                    self.shown.push(&self.partial);
                    self.partial.clear();
                }
            }
            self.line += 1;
            chunk = &chunk[at + 1..];
        }
        // Past the window: only count.
        self.line += memchr::memchr_iter(b'\n', chunk).count();
    }

    /// The window and the file's line count.
    pub fn finish(mut self) -> Found {
        // A last line without a newline.
        if self.last.is_some_and(|b| b != b'\n') {
            if self.wanted() {
                self.shown.push(&self.partial);
            }
            self.line += 1;
        }
        Found { shown: self.shown.shown(), text: self.shown.into_text(), total: self.line }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of `text` the way `str::split` and the old Read saw them.
    fn reference(text: &str, skip: usize, take: usize) -> (String, usize, usize) {
        let body = text.strip_suffix('\n').unwrap_or(text);
        let total = if text.is_empty() { 0 } else { body.split('\n').count() };
        let shown: Vec<String> = body
            .split('\n')
            .skip(skip)
            .take(take)
            .enumerate()
            .map(|(i, l)| format!("{:6}\t{}", skip + i + 1, l.strip_suffix('\r').unwrap_or(l)))
            .collect();
        let n = if total == 0 { 0 } else { shown.len() };
        (if n == 0 { String::new() } else { shown.join("\n") }, n, total)
    }

    #[test]
    fn matches_splitting_the_whole_text_for_every_chunk_size() {
        let texts = ["", "\n", "a", "a\n", "a\nb", "a\nb\n", "\n\n", "a\r\nb\r\n", "one\n\ntwo\nthree\nfour", "x\n"];
        for text in texts {
            for chunk in 1..=text.len().max(1) {
                for (skip, take) in [(0, 100), (0, 1), (1, 2), (2, 100), (3, 1), (10, 5)] {
                    let mut window = Window::new(skip, take);
                    for piece in text.as_bytes().chunks(chunk) {
                        window.feed(piece);
                    }
                    let found = window.finish();
                    assert_eq!(
                        (found.text, found.shown, found.total),
                        reference(text, skip, take),
                        "{text:?} in chunks of {chunk}, skip {skip} take {take}"
                    );
                }
            }
        }
    }

    #[test]
    fn long_lines_are_cut_and_bad_bytes_replaced() {
        let mut n = Numbered::new(7);
        n.push(&[b'a'; MAX_LINE_CHARS + 5]);
        n.push(b"ok\xff");
        let text = n.into_text();
        let (first, second) = text.split_once('\n').unwrap();
        assert!(first.ends_with("... [line cut: 5 more bytes]"), "{first}");
        assert!(first.starts_with("     7\taaa"));
        assert_eq!(second, "     8\tok\u{fffd}");
        let mut wide = Numbered::new(1_234_567);
        wide.push(b"x");
        assert_eq!(wide.into_text(), "1234567\tx");
    }
}
